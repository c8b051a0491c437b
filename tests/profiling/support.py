"""Test helpers for profiles: an independent protobuf reader for profile.proto, its invariants,
`go tool pprof` (Debian's golang-go) on a gzipped profile, and CPU/sleep workloads."""
import gzip
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

GO = shutil.which("go")


def _varint(buf, i):
    shift = v = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, i
        shift += 7


def fields(buf):
    """[(field number, wire type, value)] of one message; value is int or bytes."""
    out = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            v = bytes(buf[i:i + n])
            if len(v) != n:
                raise ValueError("truncated field %d" % f)
            i += n
        else:
            raise ValueError("unexpected wire type %d for field %d" % (wt, f))
        out.append((f, wt, v))
    return out


def _ints(vals):
    """Repeated integer field: packed (bytes) or not."""
    out = []
    for wt, v in vals:
        if wt == 2:
            j = 0
            while j < len(v):
                x, j = _varint(v, j)
                out.append(x)
        else:
            out.append(v)
    return out


def _signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _msg(buf):
    d = {}
    for f, wt, v in fields(buf):
        d.setdefault(f, []).append((wt, v))
    return d


def _one(d, f, default=0):
    vals = d.get(f)
    return vals[-1][1] if vals else default


def decode(data):
    """Decode a (gzipped) profile into plain dicts with names resolved through the string table."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    p = _msg(data)
    strings = [v.decode("utf-8") for _wt, v in p.get(6, [])]
    vt = lambda b: (strings[_one(_msg(b), 1)], strings[_one(_msg(b), 2)])
    functions = {}
    for _wt, b in p.get(5, []):
        m = _msg(b)
        functions[_one(m, 1)] = {"name": strings[_one(m, 2)], "filename": strings[_one(m, 4)],
                                 "start_line": _one(m, 5)}
    locations = {}
    for _wt, b in p.get(4, []):
        m = _msg(b)
        lines = []
        for _w, lb in m.get(4, []):
            lm = _msg(lb)
            lines.append((_one(lm, 1), _one(lm, 2)))
        locations[_one(m, 1)] = {"mapping_id": _one(m, 2), "lines": lines}
    samples = []
    for _wt, b in p.get(2, []):
        m = _msg(b)
        labels = {}
        for _w, lb in m.get(3, []):
            lm = _msg(lb)
            key = strings[_one(lm, 1)]
            labels[key] = strings[_one(lm, 2)] if _one(lm, 2) else _one(lm, 3)
        samples.append({"locations": _ints(m.get(1, [])),
                        "values": [_signed(v) for v in _ints(m.get(2, []))], "labels": labels})
    return {
        "strings": strings,
        "sample_types": [vt(b) for _wt, b in p.get(1, [])],
        "samples": samples,
        "mappings": [_msg(b) for _wt, b in p.get(3, [])],
        "locations": locations,
        "functions": functions,
        "time_nanos": _one(p, 9), "duration_nanos": _one(p, 10),
        "period_type": vt(_one(p, 11, b"")) if 11 in p else None,
        "period": _one(p, 12),
        "comments": [strings[c] for c in _ints(p.get(13, []))],
        "default_sample_type": strings[_one(p, 14)],
    }


def check_invariants(test, prof):
    """The invariants pprof relies on: "" first in the string table, ids unique and non-zero,
    every reference resolves, one value per sample type."""
    test.assertEqual(prof["strings"][0], "")
    test.assertEqual(len(set(prof["strings"])), len(prof["strings"]), "strings interned once")
    test.assertNotIn(0, prof["locations"])
    test.assertNotIn(0, prof["functions"])
    mapping_ids = {_one(m, 1) for m in prof["mappings"]}
    for loc in prof["locations"].values():
        test.assertIn(loc["mapping_id"], mapping_ids | {0})
        test.assertTrue(loc["lines"])
        for fid, line in loc["lines"]:
            test.assertIn(fid, prof["functions"])
            test.assertGreaterEqual(line, 0)
    for s in prof["samples"]:
        test.assertEqual(len(s["values"]), len(prof["sample_types"]))
        test.assertTrue(s["locations"], "every sample has a stack")
        for lid in s["locations"]:
            test.assertIn(lid, prof["locations"])


def stacks(prof):
    """[(function names leaf first, values, labels)] for every sample."""
    out = []
    for s in prof["samples"]:
        names = []
        for lid in s["locations"]:
            for fid, _line in prof["locations"][lid]["lines"]:
                names.append(prof["functions"][fid]["name"])
        out.append((names, s["values"], s["labels"]))
    return out


def go_pprof(test, data, *args):
    """Run `go tool pprof ARGS file` on gzipped profile bytes; skip only if go is absent."""
    if GO is None:
        raise unittest.SkipTest("go (Debian golang-go) is not installed")
    tmp = tempfile.mkdtemp(prefix="urdar-pprof-")
    test.addCleanup(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "profile.pb.gz")
    with open(path, "wb") as f:
        f.write(data)
    env = dict(os.environ, HOME=tmp, GOCACHE=os.path.join(tmp, "cache"), GOPATH=os.path.join(tmp, "gopath"),
               PPROF_TMPDIR=tmp, GOFLAGS="-mod=mod", GO111MODULE="off")
    r = subprocess.run([GO, "tool", "pprof"] + list(args) + [path], env=env, capture_output=True,
                       text=True, timeout=120)
    test.assertEqual(r.returncode, 0, r.stderr)
    return r.stdout


def top_functions(text):
    """Function names of `go tool pprof -top` rows, in the order printed (highest flat first)."""
    out = []
    started = False
    for line in text.splitlines():
        if line.strip().startswith("flat "):
            started = True
            continue
        if started and line.strip():
            out.append(line.split(None, 5)[5])
    return out


def spin_until(event):
    """Burn CPU in pure Python until `event` is set (the hot function of CPU tests)."""
    x = 0
    while not event.is_set():
        for i in range(2000):
            x += i * i
    return x


def sleep_until(event):
    """Wait off-CPU until `event` is set (the function fgprof must see and the CPU profile must not)."""
    while not event.wait(0.05):
        pass


def start_thread(test, target, name):
    """Run target(event) in a daemon thread, stopped and joined at cleanup."""
    ev = threading.Event()
    t = threading.Thread(target=target, args=(ev,), name=name, daemon=True)
    t.start()

    def stop():
        ev.set()
        t.join()
    test.addCleanup(stop)
    return ev, t


def wait_cpu(seconds):
    """Let other threads run for `seconds` of wall time."""
    time.sleep(seconds)
