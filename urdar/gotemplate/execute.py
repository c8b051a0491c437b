"""Executing a parsed template over Python data, as Go's text/template executes over Go values."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from urdar.gostrconv import quote

from .errors import ExecError, FuncError, LimitError
from .gofmt import MISSING, go_type, sprint_value
from .nodes import (ActionNode, BoolNode, BreakNode, ChainNode, CommandNode, ContinueNode,
                    DotNode, FieldNode, IdentifierNode, IfNode, ListNode, NilNode, Node,
                    NumberNode, PipeNode, RangeNode, StringNode, TemplateNode, TextNode, Tree,
                    VariableNode, WithNode)


class Func:
    """A template function with its arity and, optionally, the Go types of its parameters.

    Go checks the argument count before calling, and converts each argument to its parameter's
    type: `types` names them ("string", "int", "float64", "bool"; None: any value) and `rest`
    types the variadic tail, so that `{{toUpper 1}}` fails as it does in Go.
    """
    __slots__ = ("fn", "min_args", "max_args", "lazy", "types", "rest", "raw")

    def __init__(self, fn: Callable[..., Any], min_args: int, max_args: Optional[int],
                 lazy: bool = False, types: Tuple[Optional[str], ...] = (),
                 rest: Optional[str] = None, raw: bool = False) -> None:
        self.fn = fn
        self.raw = raw                # gets MISSING (Go's invalid value) as it is, not as None
        self.min_args = min_args
        self.max_args = max_args      # None: variadic
        self.lazy = lazy              # and/or: arguments evaluated one at a time
        self.types = types
        self.rest = rest

    def type_of(self, i: int) -> Optional[str]:
        return self.types[i] if i < len(self.types) else self.rest


_LITERAL_WANT = {"string": "string", "int": "integer", "float64": "float", "bool": "bool"}


def _fits(v: Any, typ: str) -> bool:
    if typ == "string":
        return isinstance(v, str)
    if typ == "bool":
        return isinstance(v, bool)
    if typ == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if typ == "float64":
        return isinstance(v, float)
    return True


class StringMap(Dict[str, str]):
    """A dict that is Go's map[string]string: under missingkey=zero a missing key is ""."""

    zero_value = ""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(v: Any) -> bool:
    """Go's isTrue: zero values, nil and empty collections are false."""
    if v is None or v is MISSING or v is False:
        return False
    if v is True:
        return True
    if isinstance(v, (int, float, str, list, tuple, dict)):
        return bool(v)
    return True


def _arg(v: Any) -> Any:
    return None if v is MISSING else v


def _size(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogateescape"))


class State:
    """One execution: output, variables, the node being run, and the limits' counters."""

    def __init__(self, trees: Dict[str, Tree], funcs: Dict[str, Func], max_steps: int,
                 max_output_bytes: int, max_depth: int, missing_key: str = "default") -> None:
        self.trees = trees
        self.missing_key = missing_key
        self.funcs = funcs
        self.out: List[str] = []
        self.out_bytes = 0
        self.steps = 0
        self.max_steps = max_steps
        self.max_output_bytes = max_output_bytes
        self.max_depth = max_depth
        self.depth = 0
        self.tree: Tree = next(iter(trees.values())) if trees else Tree("", "", ListNode(0), "")
        self.node: Optional[Node] = None
        # (name, value, iface): iface when the value is a range element of a plain list or
        # dict, whose Go type is interface {} (it shows in error messages)
        self.vars: List[Tuple[str, Any, bool]] = []
        # dot is an element of a plain list or dict: Go names its type "interface {}" in errors
        self.dot_iface = False

    # ------------------------------------------------------------ errors
    def errorf(self, msg: str, cls: type = ExecError) -> NoReturn:
        name = self.tree.name
        if self.node is None:
            raise cls("template: %s: %s" % (name, msg))
        raise cls('template: %s: executing "%s" at <%s>: %s' % (
            self.tree.location(self.node), name, self.node, msg))

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            self.errorf("execution exceeded the limit of %d steps" % self.max_steps, LimitError)

    def write(self, s: str) -> None:
        self.out_bytes += _size(s)
        if self.out_bytes > self.max_output_bytes:
            self.errorf("output exceeded the limit of %d bytes" % self.max_output_bytes, LimitError)
        self.out.append(s)

    def check_value(self, v: Any) -> Any:
        """A function's string result may not outgrow the output limit (e.g. doubling in a loop)."""
        if isinstance(v, str) and len(v) > self.max_output_bytes:
            self.errorf("value exceeded the limit of %d bytes" % self.max_output_bytes, LimitError)
        return v

    # ------------------------------------------------------------ variables
    def var_entry(self, name: str) -> Tuple[str, Any, bool]:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                return self.vars[i]
        self.errorf("undefined variable: %s" % name)

    def set_var(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value, False)
                return
        self.errorf("undefined variable: %s" % name)

    # ------------------------------------------------------------ walking
    def walk(self, dot: Any, node: Node) -> None:
        self.step()
        t = type(node)
        if t is TextNode:
            self.write(node.text)          # type: ignore[attr-defined]
        elif t is ActionNode:
            assert isinstance(node, ActionNode)
            # variables an action declares live until the end of the enclosing block
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.node = node
                self.write(self.printable(val))
        elif t is ListNode:
            assert isinstance(node, ListNode)
            for n in node.nodes:
                self.walk(dot, n)
        elif t is IfNode or t is WithNode:
            assert isinstance(node, (IfNode, WithNode))
            mark = len(self.vars)
            val = self.eval_pipeline(dot, node.pipe)
            if truth(val):
                if t is WithNode:
                    saved_iface, self.dot_iface = self.dot_iface, False
                    try:
                        self.walk(val, node.list)
                    finally:
                        self.dot_iface = saved_iface
                else:
                    self.walk(dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
            del self.vars[mark:]
        elif t is RangeNode:
            assert isinstance(node, RangeNode)
            self.walk_range(dot, node)
        elif t is TemplateNode:
            assert isinstance(node, TemplateNode)
            self.walk_template(dot, node)
        elif t is BreakNode:
            raise _Break()
        elif t is ContinueNode:
            raise _Continue()
        else:
            self.node = node
            self.errorf("unknown node: %s" % node)

    def missing(self, recv: Dict[Any, Any], name: str) -> Any:
        """A missing key under Option("missingkey=zero"/"error")."""
        if self.missing_key == "error":
            self.errorf("map has no entry for key %s" % quote(name))
        # zero: the zero value of the map's element type: "" for a StringMap (a label set),
        # nil for a plain dict (map[string]interface {})
        return getattr(type(recv), "zero_value", None)

    def printable(self, v: Any) -> str:
        if v is MISSING or v is None:     # Go: a nil interface value is an invalid Value
            return "<no value>"
        return sprint_value(v)

    def walk_range(self, dot: Any, r: RangeNode) -> None:
        self.node = r
        mark = len(self.vars)
        val = self.eval_pipeline(dot, r.pipe)
        mark2 = len(self.vars)
        ndecl = len(r.pipe.decl)
        saved_iface = self.dot_iface
        elem_iface = self.dot_iface = type(val) in (list, dict)

        def one(index: Any, elem: Any) -> bool:
            self.step()
            if ndecl > 0:
                self.vars[mark2 - 1] = (self.vars[mark2 - 1][0], elem, elem_iface)
            if ndecl > 1:
                self.vars[mark2 - 2] = (self.vars[mark2 - 2][0], index, False)
            try:
                self.walk(elem, r.list)
            except _Break:
                return False
            except _Continue:
                pass
            finally:
                del self.vars[mark2:]
            return True

        ran = False
        if isinstance(val, (list, tuple)):
            for i, e in enumerate(val):
                ran = True
                if not one(i, e):
                    break
        elif isinstance(val, dict):
            from .gofmt import _sorted_keys
            for k in _sorted_keys(val):
                ran = True
                if not one(k, val[k]):
                    break
        elif isinstance(val, int) and not isinstance(val, bool):
            if ndecl > 1:
                self.node = r
                self.errorf("can't use %s to iterate over more than one variable" % val)
            for i in range(val):             # Go 1.22+: range over an integer
                ran = True
                if not one(i, i):
                    break
        elif val is None or val is MISSING:
            pass
        elif callable(getattr(val, "__iter__", None)) and not isinstance(val, (str, bytes)):
            for i, e in enumerate(val):
                ran = True
                if not one(i, e):
                    break
        else:
            self.errorf("range can't iterate over %s" % sprint_value(val))
        self.dot_iface = saved_iface
        if not ran and r.else_list is not None:
            self.walk(dot, r.else_list)
        del self.vars[mark:]

    def walk_template(self, dot: Any, t: TemplateNode) -> None:
        self.node = t
        tree = self.trees.get(t.name)
        if tree is None:
            self.errorf("template %s not defined" % quote(t.name))
        if self.depth >= self.max_depth:
            self.errorf("exceeded maximum template depth (%d)" % self.max_depth, LimitError)
        new_dot = self.eval_pipeline(dot, t.pipe) if t.pipe is not None else MISSING
        saved = (self.tree, self.vars, self.dot_iface)
        self.tree, self.vars, self.dot_iface = tree, [("$", new_dot, False)], False
        self.depth += 1
        try:
            self.walk(new_dot, tree.root)
        finally:
            self.depth -= 1
            self.tree, self.vars, self.dot_iface = saved

    # ------------------------------------------------------------ evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        self.node = pipe
        value: Any = _NOFINAL
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if value is None:
                # Go unwraps each command's interface value: a nil becomes the invalid value,
                # so (.nil).x is <no value> and not an error, unlike .nil.x
                value = MISSING
        for v in pipe.decl:
            if pipe.is_assign:
                self.set_var(v.idents[0], value)
            else:
                self.vars.append((v.idents[0], value, False))
        return value

    def not_a_function(self, args: Sequence[Node], final: Any) -> None:
        if len(args) > 1 or final is not _NOFINAL:
            self.errorf("can't give argument to non-function %s" % args[0])

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        self.step()
        first = cmd.args[0]
        t = type(first)
        if t is FieldNode:
            assert isinstance(first, FieldNode)
            self.node = first
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if t is ChainNode:
            assert isinstance(first, ChainNode)
            return self.eval_chain(dot, first, cmd.args, final)
        if t is IdentifierNode:
            assert isinstance(first, IdentifierNode)
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if t is PipeNode:
            assert isinstance(first, PipeNode)
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if t is VariableNode:
            assert isinstance(first, VariableNode)
            return self.eval_variable(dot, first, cmd.args, final)
        self.node = first
        self.not_a_function(cmd.args, final)
        if t is BoolNode:
            return first.value               # type: ignore[attr-defined]
        if t is DotNode:
            return dot
        if t is NilNode:
            self.errorf("nil is not a command")
        if t is NumberNode:
            return self.ideal_constant(first)  # type: ignore[arg-type]
        if t is StringNode:
            return first.text                # type: ignore[attr-defined]
        self.errorf("can't evaluate command %s" % quote(str(first)))

    def ideal_constant(self, n: NumberNode) -> Any:
        self.node = n
        if isinstance(n.value, str):
            self.errorf(n.value)
        return n.value

    def eval_chain(self, dot: Any, chain: ChainNode, args: Sequence[Node], final: Any) -> Any:
        self.node = chain
        if isinstance(chain.node, NilNode):
            self.errorf("indirection through explicit nil in %s" % chain)
        recv = self.eval_arg(dot, chain.node)
        return self.eval_field_chain(dot, recv, chain, chain.fields, args, final)

    def eval_variable(self, dot: Any, v: VariableNode, args: Sequence[Node], final: Any) -> Any:
        self.node = v
        _, value, iface = self.var_entry(v.idents[0])
        if len(v.idents) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, v, v.idents[1:], args, final, iface)

    def eval_field_chain(self, dot: Any, recv: Any, node: Node, idents: Sequence[str],
                         args: Sequence[Node], final: Any, iface: bool = False) -> Any:
        n = len(idents)
        iface = iface or (self.dot_iface and recv is dot and type(node) is FieldNode)
        for i in range(n - 1):
            iface_next = type(recv) is dict
            recv = self.eval_field(dot, idents[i], node, (), _NOFINAL, recv, iface)
            iface = iface_next
        return self.eval_field(dot, idents[n - 1], node, args, final, recv, iface)

    def eval_field(self, dot: Any, name: str, node: Node, args: Sequence[Node], final: Any,
                   recv: Any, iface: bool = False) -> Any:
        """Field `name` of `recv`: a method (callable attribute), a map key, or an attribute.

        `iface`: the receiver came out of a map, so Go would name its type "interface {}".
        """
        if recv is MISSING:
            if self.missing_key == "error":
                self.errorf("nil data; no entry for key %s" % quote(name))
            return MISSING
        if recv is None:
            self.errorf("nil pointer evaluating interface {}.%s" % name)
        has_args = len(args) > 1 or final is not _NOFINAL
        if type(recv) not in _PLAIN and not name.startswith("_"):
            attr = _lookup_attr(recv, name)
            if attr is not _NOATTR:
                if callable(attr):
                    return self.eval_call(dot, attr, None, node, name, args, final)
                if has_args:
                    self.errorf("%s has arguments but cannot be invoked as function" % name)
                return attr
        if isinstance(recv, dict):
            if has_args:
                self.errorf("%s is not a method but has arguments" % name)
            v = recv.get(name, MISSING)
            if v is MISSING and self.missing_key != "default":
                return self.missing(recv, name)
            return v
        self.errorf("can't evaluate field %s in type %s" % (
            name, "interface {}" if iface else go_type(recv)))

    def eval_function(self, dot: Any, node: IdentifierNode, cmd: Node, args: Sequence[Node],
                      final: Any) -> Any:
        self.node = node
        f = self.funcs.get(node.name)
        if f is None:
            self.errorf("%s is not a defined function" % quote(node.name))
        return self.eval_call(dot, f.fn, f, cmd, node.name, args, final)

    def eval_call(self, dot: Any, fn: Callable[..., Any], f: Optional[Func], node: Node, name: str,
                  args: Sequence[Node], final: Any) -> Any:
        argn = list(args[1:]) if args else []
        nargs = len(argn) + (0 if final is _NOFINAL else 1)
        if f is None:
            f = _method_arity(fn)
        if f.max_args is None:
            if nargs < f.min_args:
                self.errorf("wrong number of args for %s: want at least %d got %d" % (
                    name, f.min_args, nargs))
        elif not f.min_args <= nargs <= f.max_args:
            self.errorf("wrong number of args for %s: want %d got %d" % (name, f.max_args, nargs))
        if f.lazy:                             # and/or: stop at the first deciding argument
            want = name == "or"
            v: Any = None
            for a in argn:
                v = _arg(self.eval_arg(dot, a))
                if truth(v) == want:
                    return v
            if final is not _NOFINAL:
                v = _arg(final)
            return v
        if f.types or f.rest:
            argv = [self.eval_typed_arg(dot, a, f.type_of(i)) for i, a in enumerate(argn)]
            if final is not _NOFINAL:
                argv.append(self.validate(final, f.type_of(len(argn))))
        elif f.raw:
            argv = [self.eval_arg(dot, a) for a in argn]
            if final is not _NOFINAL:
                argv.append(final)
        else:
            argv = [_arg(self.eval_arg(dot, a)) for a in argn]
            if final is not _NOFINAL:
                argv.append(_arg(final))
        try:
            result = fn(*argv)
        except (ExecError, _Break, _Continue):
            raise
        except RecursionError:
            self.node = node
            self.errorf("error calling %s: nesting too deep" % name, LimitError)
        except Exception as e:
            self.node = node
            self.errorf("error calling %s: %s" % (name, _err_text(e)))
        return self.check_value(result)

    def eval_typed_arg(self, dot: Any, n: Node, typ: Optional[str]) -> Any:
        """An argument for a parameter of Go type `typ`: literals convert, values must match."""
        if typ is None:
            return _arg(self.eval_arg(dot, n))
        t = type(n)
        if t in (StringNode, NumberNode, BoolNode, NilNode):
            self.node = n
            if t is NilNode:
                self.errorf("cannot assign nil to %s" % typ)
            if typ == "string" and t is StringNode:
                return n.text                        # type: ignore[attr-defined]
            if typ == "bool" and t is BoolNode:
                return n.value                       # type: ignore[attr-defined]
            if t is NumberNode:
                assert isinstance(n, NumberNode)
                v = n.value
                if typ == "float64" and isinstance(v, (int, float)):
                    return float(v)
                if typ == "int" and (isinstance(v, int) or isinstance(v, float) and v.is_integer()
                                     and not n.text.startswith("'") and "." not in n.text):
                    return int(v)
            self.errorf("expected %s; found %s" % (_LITERAL_WANT[typ], n))
        return self.validate(self.eval_arg(dot, n), typ)

    def validate(self, v: Any, typ: Optional[str]) -> Any:
        if typ is None:
            return _arg(v)
        if v is MISSING:
            self.errorf("invalid value; expected %s" % typ)
        if not _fits(v, typ):
            self.errorf("wrong type for value; expected %s; got %s" % (
                typ, "interface {}" if v is None else go_type(v)))
        return v

    def eval_arg(self, dot: Any, n: Node) -> Any:
        self.node = n
        t = type(n)
        if t is DotNode:
            return dot
        if t is NilNode:
            return None
        if t is FieldNode:
            assert isinstance(n, FieldNode)
            return self.eval_field_chain(dot, dot, n, n.idents, (n,), _NOFINAL)
        if t is VariableNode:
            assert isinstance(n, VariableNode)
            return self.eval_variable(dot, n, (n,), _NOFINAL)
        if t is PipeNode:
            assert isinstance(n, PipeNode)
            return self.eval_pipeline(dot, n)
        if t is IdentifierNode:
            assert isinstance(n, IdentifierNode)
            return self.eval_function(dot, n, n, (n,), _NOFINAL)
        if t is ChainNode:
            assert isinstance(n, ChainNode)
            return self.eval_chain(dot, n, (n,), _NOFINAL)
        if t is BoolNode:
            return n.value                 # type: ignore[attr-defined]
        if t is NumberNode:
            return self.ideal_constant(n)  # type: ignore[arg-type]
        if t is StringNode:
            return n.text                  # type: ignore[attr-defined]
        self.errorf("can't handle %s for arg" % n)


_PLAIN = frozenset((dict, list, tuple, str, int, float, bool))
_BUILTIN_BASES = frozenset((object, dict, list, tuple, str, int, float, bool))


class _NoAttr:
    __slots__ = ()


_NOATTR: Any = _NoAttr()


def _lookup_attr(recv: Any, name: str) -> Any:
    """recv.name if the data's own class or instance defines it: never a builtin type's method
    (a label set is a dict, but {{.Labels.keys}} is a label, not dict.keys)."""
    d = getattr(recv, "__dict__", None)
    if d is not None and name in d:
        return d[name]
    for cls in type(recv).__mro__:
        if cls in _BUILTIN_BASES:
            continue
        if name in cls.__dict__:
            return getattr(recv, name)
    return _NOATTR


class _NoFinal:
    __slots__ = ()


_NOFINAL: Any = _NoFinal()




def _err_text(e: Exception) -> str:
    if isinstance(e, FuncError):
        return str(e)
    s = str(e)
    return s if s else type(e).__name__


_ARITY_CACHE: Dict[Any, Func] = {}


def arity(fn: Callable[..., Any]) -> Func:
    """Wrap a plain callable with its argument counts, read once from its signature."""
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return Func(fn, 0, None)
    lo = 0
    hi: Optional[int] = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            hi = None
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if hi is not None:
                hi += 1
            if p.default is p.empty:
                lo += 1
    return Func(fn, lo, hi)


def _method_arity(fn: Callable[..., Any]) -> Func:
    key = getattr(fn, "__func__", fn)
    f = _ARITY_CACHE.get(key)
    if f is None:
        f = arity(fn)
        if len(_ARITY_CACHE) < 4096:
            _ARITY_CACHE[key] = Func(key, f.min_args, f.max_args)
        return f
    return Func(fn, f.min_args, f.max_args)
