"""Template: parse once, execute many times, with limits on steps, output and nesting."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

from .builtins import BUILTINS
from .errors import ExecError, LimitError
from .execute import Func, State, arity
from .gofmt import MISSING
from .nodes import Tree
from .parser import parse

FuncMap = Mapping[str, Union[Callable[..., Any], Func]]

DEFAULT_MAX_STEPS = 1_000_000
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 40        # nested {{template}} calls; Go allows 100000, Python's stack does not


class Template:
    """A set of named templates sharing one function map, like Go's *template.Template.

    `funcs` adds to (or overrides) the builtins; plain callables get their arity from their
    signature once, here. Limits bound each execution: `max_steps` (nodes walked and commands
    run), `max_output_bytes` (also the largest string a function may return) and `max_depth`
    (nested {{template}} calls). Exceeding one raises LimitError. `missing_key` is Go's
    Option("missingkey=..."): "default" prints <no value>, "zero" gives the map's zero value
    ("" for a StringMap such as a label set, which Prometheus' alert templates rely on; nil for
    a plain dict, Go's map[string]interface {}), "error" fails.
    """

    def __init__(self, name: str, funcs: Optional[FuncMap] = None, *,
                 max_steps: int = DEFAULT_MAX_STEPS,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                 max_depth: int = DEFAULT_MAX_DEPTH, missing_key: str = "default") -> None:
        if missing_key not in ("default", "invalid", "zero", "error"):
            raise ValueError("unrecognized option: missingkey=%s" % missing_key)
        self.name = name
        self.missing_key = "default" if missing_key == "invalid" else missing_key
        self.funcs: Dict[str, Func] = dict(BUILTINS)
        if funcs:
            self.add_funcs(funcs)
        self.trees: Dict[str, Tree] = {}
        self.max_steps = max_steps
        self.max_output_bytes = max_output_bytes
        self.max_depth = max_depth

    def add_funcs(self, funcs: FuncMap) -> "Template":
        for k, f in funcs.items():
            self.funcs[k] = f if isinstance(f, Func) else arity(f)
        return self

    def parse(self, text: str, name: Optional[str] = None) -> "Template":
        """Parse `text` as the body of `name` (default: this template) plus its {{define}}s.

        A later definition replaces an earlier one of the same name, except that an empty body
        never replaces a non-empty one (as Go's text/template).
        """
        trees = parse(name or self.name, text, self.funcs.__contains__)
        for n, tree in trees.items():
            old = self.trees.get(n)
            if old is not None and tree.is_empty() and not old.is_empty():
                continue
            self.trees[n] = tree
        return self

    def defined(self) -> list[str]:
        return sorted(self.trees)

    def execute(self, data: Any = None, name: Optional[str] = None) -> str:
        """Run template `name` (default: this one) with dot = data; returns the output text."""
        name = name or self.name
        tree = self.trees.get(name)
        if tree is None:
            if name == self.name:
                raise ExecError('template: %s: "%s" is an incomplete or empty template' % (name, name))
            raise ExecError('template: no template "%s" associated with template "%s"' % (
                name, self.name))
        st = State(self.trees, self.funcs, self.max_steps, self.max_output_bytes, self.max_depth,
                   self.missing_key)
        if data is None:
            data = MISSING          # Go: reflect.ValueOf(nil) is the invalid value
        st.tree = tree
        st.vars = [("$", data, False)]
        try:
            st.walk(data, tree.root)
        except RecursionError:
            raise LimitError("template: %s: nesting too deep to execute" % name) from None
        return "".join(st.out)
