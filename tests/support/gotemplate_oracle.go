// gotemplate_oracle runs Go's text/template on a batch of cases, the reference that
// tests/gotemplate compares urdar.gotemplate with.
//
// stdin: a JSON array of {"template": "...", "data": <any JSON>, "option": "missingkey=..."}; stdout: a JSON array of
// {"out": "...", "err": "..."} in the same order, err empty when the template parsed and ran.
// JSON numbers without a fraction or exponent become int (Python's int), others float64.
package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"text/template"
	"time"
)

// Go library functions urdar re-implements, for direct comparison (the table templates do not
// use them; tests/gotemplate/test_gostdlib.py does).
var stdlibFuncs = template.FuncMap{
	"goTime": func(layout string, ms int64, zone string) (string, error) {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			return "", err
		}
		t := time.UnixMilli(ms).In(loc)
		if layout == "" {
			return t.String(), nil
		}
		return t.Format(layout), nil
	},
	"goDuration": func(ns int64) string { return time.Duration(ns).String() },
	"goTitle":    strings.Title,
	"goReplace": func(pattern, repl, text string) (string, error) {
		re, err := regexp.Compile(pattern)
		if err != nil {
			return "", err
		}
		return re.ReplaceAllString(text, repl), nil
	},
	"goMatch":    regexp.MatchString,
	"goUnescape": url.QueryUnescape,
	"goHostPort": func(hostPort string) string {
		host, port, err := net.SplitHostPort(hostPort)
		if err != nil {
			return "error"
		}
		return host + " " + port
	},
}

type testCase struct {
	Template string          `json:"template"`
	Data     json.RawMessage `json:"data"`
	Option   string          `json:"option"`
}

type result struct {
	Out string `json:"out"`
	Err string `json:"err"`
}

func convert(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		s := string(x)
		if !strings.ContainsAny(s, ".eE") {
			if i, err := x.Int64(); err == nil {
				return int(i)
			}
		}
		f, _ := x.Float64()
		return f
	case []interface{}:
		for i := range x {
			x[i] = convert(x[i])
		}
		return x
	case map[string]interface{}:
		for k := range x {
			x[k] = convert(x[k])
		}
		return x
	}
	return v
}

func run(c testCase) (res result) {
	defer func() {
		if r := recover(); r != nil {
			res = result{Err: "panic"}
		}
	}()
	var data interface{}
	if len(c.Data) > 0 {
		dec := json.NewDecoder(bytes.NewReader(c.Data))
		dec.UseNumber()
		if err := dec.Decode(&data); err != nil {
			return result{Err: "bad data: " + err.Error()}
		}
		data = convert(data)
	}
	t := template.New("t").Funcs(stdlibFuncs)
	if c.Option != "" {
		t.Option(c.Option)
	}
	t, err := t.Parse(c.Template)
	if err != nil {
		return result{Err: err.Error()}
	}
	var out strings.Builder
	if err := t.Execute(&out, data); err != nil {
		return result{Out: out.String(), Err: err.Error()}
	}
	return result{Out: out.String()}
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(2)
	}
	results := make([]result, len(cases))
	for i, c := range cases {
		results[i] = run(c)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(results); err != nil {
		os.Exit(3)
	}
}
