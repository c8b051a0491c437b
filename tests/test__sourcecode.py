"""Lint is a test too: the Python sources have no unused imports, undefined names or dead locals."""
import ast
import os
import unittest

import pyflakes.api
import pyflakes.reporter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Collect(pyflakes.reporter.Reporter):
    def __init__(self):
        self.problems = []

    def unexpectedError(self, filename, msg):
        self.problems.append("%s: %s" % (filename, msg))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.problems.append("%s:%s: %s" % (filename, lineno, msg))

    def flake(self, message):
        self.problems.append(str(message))


class SourceCodeTests(unittest.TestCase):
    def test_pyflakes(self):
        """pyflakes reports nothing for urdar/, tests/ and benchmarks/."""
        report = _Collect()
        paths = [os.path.join(ROOT, d) for d in ("urdar", "tests", "benchmarks")]
        pyflakes.api.checkRecursive(paths, report)
        self.assertEqual(report.problems, [], "\n" + "\n".join(report.problems))


# Which urdar packages each layer may import, bottom to top (the style guide's "What each folder owns").
# A package always may import itself; anything not listed is an upward (or sideways) import.
# profiling/ is a leaf utility below everything (stdlib only), so the engine's TSDB can take its
# contention-counting Lock and net/offload.py can list offloaded work for /debug/pprof/goroutine.
# gostrconv/ is another (stdlib only): the one copy of Go's string quoting.
LAYERS = {
    "profiling": (),
    "gostrconv": (),        # Go's string quoting, for error texts at every layer
    "gotemplate": ("gostrconv",),   # Go's text/template, shared by the ruler and the alertmanager
    "engine": ("profiling", "gostrconv"),
    "net": ("engine", "profiling", "gostrconv"),
    "storage": ("engine", "net", "profiling", "gostrconv"),
    "promql": ("engine", "net", "profiling", "gostrconv"),
    "components": ("engine", "net", "profiling", "storage", "promql", "gotemplate", "gostrconv"),
    "handlers": ("engine", "net", "profiling", "storage", "promql", "components", "gotemplate",
                 "gostrconv"),
    "app": ("engine", "net", "profiling", "storage", "promql", "components", "handlers", "gotemplate",
            "gostrconv"),
}
# Top-level modules of the package: __main__ runs the app; __init__ only holds the version.
TOP_LEVEL = {"__init__": (), "__main__": ("app",)}


def urdar_imports(path):
    """(line, imported urdar package) for every import of an urdar.* module in the file at path,
    including imports inside functions (lazy imports are still dependencies)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "urdar":     # from urdar import promql
                names = ["urdar." + a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "urdar" and len(parts) > 1:
                yield node.lineno, parts[1]


def layering_violations(root):
    """Every import in urdar/ that goes up (or sideways) the layer table, as readable lines."""
    problems = []
    pkg = os.path.join(root, "urdar")
    for dirpath, _dirs, files in os.walk(pkg):
        for fn in sorted(files):
            if not fn.endswith(".py"):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, pkg).split(os.sep)
            if len(rel) == 1:
                layer, allowed = None, TOP_LEVEL.get(fn[:-3], ())
            else:
                layer = rel[0]
                if layer not in LAYERS:
                    problems.append("urdar/%s is in no layer: add it to LAYERS" % "/".join(rel))
                    continue
                allowed = LAYERS[layer]
            for lineno, target in urdar_imports(path):
                if target in ("__version__",) or target == layer or target in allowed:
                    continue
                problems.append("urdar/%s:%d imports urdar.%s (a %s module may import only %s)" % (
                    "/".join(rel), lineno, target, layer or "top-level",
                    ", ".join(allowed) or "nothing from urdar"))
    return problems


class ImportGraphTests(unittest.TestCase):
    def test_no_upward_imports(self):
        """No module under urdar/ imports a layer above its own (profiling < engine < net <
        storage, promql < components < handlers < app)."""
        problems = layering_violations(ROOT)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_detects_upward_import(self):
        """The checker flags a component importing a handler and a net module importing the app."""
        import tempfile
        with tempfile.TemporaryDirectory() as root:
            for rel, text in (("urdar/components/x.py", "from urdar.handlers import errors\n"),
                              ("urdar/net/y.py", "def f():\n    import urdar.app.main\n"),
                              ("urdar/handlers/z.py", "from urdar.components import errors\n")):
                os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
                with open(os.path.join(root, rel), "w") as f:
                    f.write(text)
            problems = layering_violations(root)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("urdar/components/x.py:1 imports urdar.handlers", problems[0] + problems[1])
        self.assertIn("urdar/net/y.py:2 imports urdar.app", problems[0] + problems[1])
