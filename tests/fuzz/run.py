"""Long fuzz runs (`make fuzz`): every target of tests/fuzz/targets.py in its own process
under atheris (coverage-guided libFuzzer over our Python code, seeded with valid inputs and
structured examples), or under hypothesis when atheris is not installed. Prints one line per
target with the number of inputs run and the outcome; exits non-zero on any finding (the
crashing input is kept as crash-<target>-* in --out).

    python -m tests.fuzz.run [--runs 100000] [--out DIR] [TARGET ...]"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def _targets():
    from tests.fuzz import targets as T
    return {t.name: t for t in T.ALL_TARGETS}


def _child(name, runs, out):
    """Run one target under atheris in this process (libFuzzer exits the process at the end)."""
    import atheris
    from hypothesis.errors import NonInteractiveExampleWarning
    import warnings
    from tests.fuzz import targets as T
    with atheris.instrument_imports(include=["urdar"]):
        target = _targets()[name]()
    corpus = tempfile.mkdtemp(prefix="urdar-fuzz-%s-" % name)
    seeds = list(target.seeds())
    strategy = T.inputs(target.generated(), seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        seeds += [strategy.example() for _ in range(30)]
    for i, s in enumerate(seeds):
        with open(os.path.join(corpus, "seed%03d" % i), "wb") as f:
            f.write(s)
    args = [sys.argv[0], "-runs=%d" % runs, "-timeout=60", "-rss_limit_mb=4096", "-max_len=65536",
            "-print_final_stats=1", "-artifact_prefix=%s/crash-%s-" % (out, name), corpus]
    atheris.Setup(args, target.check)
    atheris.Fuzz()


def _hypothesis(name, runs):
    env = dict(os.environ, URDAR_FUZZ_EXAMPLES=str(runs))
    test = {"remotewrite": "test_remotewrite_decode", "otlp": "test_otlp_decode",
            "promql": "test_promql_parse", "remoteread": "test_remoteread_decode",
            "runtimeconfig": "test_runtime_config", "http_push": "test_push", "http_otlp": "test_otlp",
            "http_read": "test_remote_read", "http_query": "test_query",
            "http_upload_meta": "test_upload_meta", "http_upload_index": "test_upload_index"}[name]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/fuzz/test_fuzz.py",
                           "-k", test], env=env, capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--out", default=".")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.runs, os.path.abspath(a.out))
        return 0
    names = a.targets or list(_targets())
    import importlib.util
    engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    failed = 0
    for name in names:
        t0 = time.monotonic()
        if engine == "atheris":
            p = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--child", name, "--runs",
                                str(a.runs), "--out", a.out], capture_output=True, text=True)
            done = re.findall(r"stat::number_of_executed_units: (\d+)", p.stderr)
            n = int(done[-1]) if done else 0
        else:
            p = _hypothesis(name, a.runs)
            n = a.runs if p.returncode == 0 else 0
        ok = p.returncode == 0
        failed += not ok
        print("%-18s %-10s inputs=%-8d %.0fs %s" % (name, engine, n, time.monotonic() - t0,
                                                     "ok" if ok else "FINDING"), flush=True)
        if not ok:
            sys.stdout.write((p.stdout + p.stderr)[-4000:] + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
