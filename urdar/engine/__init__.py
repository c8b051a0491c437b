"""The TSDB engine: Cython extension modules compiled by setup.py.

There is no pure-Python fallback: importing a missing module here is a broken build."""
