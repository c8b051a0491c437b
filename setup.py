"""Build urdar and its Cython engine.

Every ``urdar/<pkg>/<name>.pyx`` becomes one extension module ``urdar.<pkg>.<name>`` (the
TSDB in ``urdar/engine/``, the PromQL kernels in ``urdar/promql/``, the heap-sampling allocator
hook in ``urdar/profiling/``). ``URDAR_DEBUG=1``
compiles the invariant checks in ``debug.h``; ``URDAR_ONLY=a,b`` limits a development build to
the named modules, by bare name (``kernels``) or dotted (``promql.kernels``); CI always builds
all of them.
"""
import glob
import os

from setuptools import Extension, find_packages, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # a broken build, not a fallback: see engine/__init__.py
    raise SystemExit("Cython is required to build urdar: pip install Cython") from exc

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.join("urdar", "engine")  # debug.h and the shared .pxd files live here


def extensions():
    only = {m for m in os.environ.get("URDAR_ONLY", "").split(",") if m}
    macros = [("CYTHON_TRACE", "0")]
    if os.environ.get("URDAR_DEBUG"):
        macros.append(("URDAR_DEBUG", "1"))
    exts = []
    for path in sorted(glob.glob(os.path.join("urdar", "*", "*.pyx"))):
        pkg = os.path.basename(os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
        if only and name not in only and pkg + "." + name not in only:
            continue
        exts.append(Extension(
            "urdar.%s.%s" % (pkg, name),
            [path],
            # a change to a header alone (promql/shortest.h, engine/crc32c.h) must rebuild too
            depends=sorted(set(glob.glob(os.path.join(os.path.dirname(path), "*.h")))
                           | set(glob.glob(os.path.join(ENGINE, "*.h")))),
            include_dirs=sorted({os.path.dirname(path), ENGINE}),
            define_macros=macros,
            extra_compile_args=["-O3", "-fno-strict-aliasing", "-Wno-unused-function", "-Wno-sign-compare"],
        ))
    return exts


setup(
    name="urdar",
    version="0.1.0",
    description="Multi-tenant long-term storage for Prometheus metrics, speaking the Mimir HTTP API",
    packages=find_packages(include=["urdar", "urdar.*"]),
    # PEP 561: py.typed marks urdar as typed; the .pyi stubs describe the compiled modules
    package_data={"": ["*.pyi"], "urdar": ["py.typed"],
                  **{"urdar." + os.path.basename(os.path.dirname(d)): ["*.pxd", "*.pyi", "*.h"]
                     for d in glob.glob(os.path.join("urdar", "*", "__init__.py"))},
                  # the alertmanager web UI's script and style sheet (handlers/amui.py)
                  "urdar.handlers": ["*.pyi", "static/*.js", "static/*.css"]},
    ext_modules=cythonize(
        extensions(),
        language_level=3,
        # boundscheck hints are noise: checks go off one function at a time, when a benchmark shows
        # the win (the shared style guide's "Cython shape"; it lives beside the repository, not in it)
        compiler_directives={"embedsignature": True, "cdivision": True, "show_performance_hints": False},
        annotate=bool(os.environ.get("URDAR_ANNOTATE")),
    ),
    python_requires=">=3.11",
    entry_points={"console_scripts": ["urdar = urdar.app.main:main"]},
    zip_safe=False,
)
