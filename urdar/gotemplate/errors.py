"""The errors a template raises; their text follows Go's text/template."""


class TemplateError(Exception):
    """Any error of a template: parse, execution, or a limit."""


class ParseError(TemplateError):
    """Malformed template text: "template: NAME:LINE: message"."""


class ExecError(TemplateError):
    """Execution failed: "template: NAME:LINE:COL: executing "NAME" at <node>: message"."""


class LimitError(ExecError):
    """Execution stopped by a limit (output bytes, steps, template depth): Go has none, a shared service must."""


class FuncError(Exception):
    """Raised by template functions; shown as Go shows a function's error ("error calling NAME: ...")."""
