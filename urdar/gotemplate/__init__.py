"""Go's text/template in Python: one engine for the ruler's alert templates (Prometheus'
functions, prometheus.py) and the alertmanager's notification templates (alertmanager.py).

A low-level utility like net/ and profiling/: it imports nothing else from urdar.

    t = Template("annotation", prometheus_funcs(query=q), missing_key="zero").parse(text)
    out = t.execute(data)          # parse once, execute many times, from any thread

Parsing builds immutable trees; each execute() has its own state, so one parsed Template can
run concurrently in the offload pools (parse() mutates: finish parsing before sharing). Work
grows with the template and the data, so callers run execute() off the reactor.

Values: dicts are Go maps (sorted keys when ranged or printed), lists are slices, other objects
are structs whose attributes are fields and whose callable attributes are methods (never Python
builtins' methods, never names starting with "_"). Output, %v, printf and error texts follow Go,
checked against Go itself (tests/gotemplate).

Differences from Go, on purpose: execution limits (steps, output bytes, {{template}} depth: Go
has none, a shared service must; LimitError); range over an integer (Go 1.22) and {{else with}}
(Go 1.23) are accepted although the reference Go (Debian's 1.19) predates them; complex numbers
are not supported. Go 1.19 quirk not reproduced: slice rejecting an index read from a map.
"""
from .errors import ExecError, FuncError, LimitError, ParseError, TemplateError
from .execute import Func, StringMap
from .gofmt import MISSING
from .template import Template

__all__ = ["ExecError", "Func", "FuncError", "LimitError", "MISSING", "ParseError", "StringMap",
           "Template", "TemplateError"]
