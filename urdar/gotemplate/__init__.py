"""Go's text/template in Python: one engine for the ruler's alert templates (Prometheus'
functions, prometheus.py) and the alertmanager's notification templates (alertmanager.py).

A low-level utility like net/ and profiling/: it imports nothing else from urdar.
"""
from .errors import ExecError, FuncError, LimitError, ParseError, TemplateError
from .execute import Func, StringMap
from .gofmt import MISSING
from .template import Template

__all__ = ["ExecError", "Func", "FuncError", "LimitError", "MISSING", "ParseError", "StringMap", "Template",
           "TemplateError"]
