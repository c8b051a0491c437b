"""PromQL: lexer, parser and syntax tree (`parse_expr`), and later the evaluator."""

from urdar.promql.parser import Options, ParseError, parse_expr, parse_metric_selector

__all__ = ["Options", "ParseError", "parse_expr", "parse_metric_selector"]
