"""Types are a test too: mypy passes over urdar/ and every compiled module's .pyi matches it.

mypy reads mypy.ini (lenient globally, strict for urdar.app and the protocol modules) and keeps
its cache in .mypy_cache/ so repeated runs take a second or two. The stub check runs mypy's
stubtest, which imports each module and compares it with its .pyi both ways: every name and
signature in the stub exists at runtime, and every public runtime function, class and method
is in the stub.
"""
import contextlib
import glob
import io
import os
import tempfile
import unittest

import mypy.api
import mypy.stubtest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "mypy.ini")

# Names Cython adds to every module or class: pickling hooks, doctest table, C-API capsule.
STUBTEST_ALLOWLIST = r"""
urdar\.\w+(\.\w+)*\.(__pyx_capi__|__test__)
urdar\.\w+(\.\w+)*\.(__reduce_cython__|__setstate_cython__)
"""


def _module(path):
    return os.path.splitext(os.path.relpath(path, ROOT))[0].replace(os.sep, ".")


def cython_modules():
    """Dotted names of every Cython module in urdar/ (one .pyx each)."""
    return sorted(_module(p) for p in glob.glob(os.path.join(ROOT, "urdar", "**", "*.pyx"),
                                                recursive=True))


def stubbed_modules():
    """Dotted names of every module of urdar/ that has a .pyi stub."""
    return sorted(_module(p) for p in glob.glob(os.path.join(ROOT, "urdar", "**", "*.pyi"),
                                                recursive=True))


def run_stubtest(modules):
    """(exit code, report) of stubtest over `modules` with urdar's mypy config."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(STUBTEST_ALLOWLIST)
    try:
        args = mypy.stubtest.parse_options(
            ["--concise", "--ignore-disjoint-bases", "--mypy-config-file", CONFIG,
             "--allowlist", f.name] + list(modules))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = mypy.stubtest.test_stubs(args)
        return code, out.getvalue()
    finally:
        os.unlink(f.name)


class StubTests(unittest.TestCase):
    def test_every_cython_module_has_a_stub(self):
        """Each .pyx under urdar/ ships a .pyi beside it (tests/engine/test_build.py checks they compile)."""
        mods = cython_modules()
        self.assertGreaterEqual(len(mods), 14)
        self.assertEqual([m for m in mods if m not in stubbed_modules()], [],
                         "Cython modules without a .pyi stub")

    def test_stubs_match_runtime_modules(self):
        """Every .pyi under urdar/ names exactly what its module defines, with the same signatures."""
        mods = stubbed_modules()
        code, report = run_stubtest(mods)
        self.assertEqual(code, 0, "\n" + report)

    def test_stub_check_catches_a_missing_name(self):
        """A stub that lacks a public runtime function fails the stub check."""
        # Stubtest over a throwaway copy of labels.pyi without hash_key, found first on mypy_path.
        with tempfile.TemporaryDirectory() as d:
            pkg = os.path.join(d, "urdar", "engine")
            os.makedirs(pkg)
            for init in (os.path.join(d, "urdar"), pkg):
                open(os.path.join(init, "__init__.pyi"), "w").close()
            with open(os.path.join(ROOT, "urdar", "engine", "labels.pyi")) as f:
                stub = "".join(ln for ln in f if not ln.startswith("def hash_key("))
            with open(os.path.join(pkg, "labels.pyi"), "w") as f:
                f.write(stub)
            config = os.path.join(d, "mypy.ini")
            with open(config, "w") as f:
                f.write("[mypy]\npython_version = 3.11\nmypy_path = %s\n" % d)
            args = mypy.stubtest.parse_options(
                ["--concise", "--ignore-disjoint-bases", "--mypy-config-file", config,
                 "urdar.engine.labels"])
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = mypy.stubtest.test_stubs(args)
        self.assertNotEqual(code, 0)
        self.assertIn("urdar.engine.labels.hash_key is not present in stub", out.getvalue())


class MypyTests(unittest.TestCase):
    def test_urdar_type_checks(self):
        """mypy with mypy.ini reports no errors for urdar/."""
        stdout, stderr, code = mypy.api.run(
            ["--config-file", CONFIG, "--cache-dir", os.path.join(ROOT, ".mypy_cache"),
             os.path.join(ROOT, "urdar")])
        self.assertEqual(code, 0, "\n" + stdout + stderr)
