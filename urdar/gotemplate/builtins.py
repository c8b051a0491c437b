"""text/template's predefined functions, over the Python values templates see."""
from __future__ import annotations

from typing import Any, Dict, List

from .errors import FuncError
from .execute import Func, truth
from .gofmt import MISSING, go_type, sprint, sprint_value, sprintf, sprintln

_BOOL, _INT, _FLOAT, _STRING, _INVALID = range(5)


def _kind(v: Any) -> int:
    if isinstance(v, bool):
        return _BOOL
    if isinstance(v, int):
        return _INT
    if isinstance(v, float):
        return _FLOAT
    if isinstance(v, str):
        return _STRING
    return _INVALID


def eq(arg1: Any, *rest: Any) -> bool:
    if not rest:
        raise FuncError("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in rest:
        k2 = _kind(arg)
        if k1 != k2:
            if arg1 is not None and arg is not None:
                raise FuncError("incompatible types for comparison")
            truth_ = False
        elif k1 != _INVALID:
            truth_ = arg1 == arg
        else:
            if arg1 is None or arg is None:
                truth_ = arg1 is None and arg is None
            elif isinstance(arg, (list, dict)) or isinstance(arg1, (list, dict)):
                if type(arg1) is not type(arg):
                    raise FuncError("non-comparable types %s: %s, %s: %s" % (
                        sprintf("%s", [arg1]), go_type(arg1), go_type(arg), sprint_value(arg)))
                raise FuncError("non-comparable type %s: %s" % (sprintf("%s", [arg]), go_type(arg)))
            else:
                truth_ = arg1 == arg
        if truth_:
            return True
    return False


def ne(a: Any, b: Any) -> bool:
    return not eq(a, b)


def lt(a: Any, b: Any) -> bool:
    k1, k2 = _kind(a), _kind(b)
    if k1 == _INVALID or k2 == _INVALID:
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
    if k1 == _BOOL:
        raise FuncError("invalid type for comparison")
    return bool(a < b)


def le(a: Any, b: Any) -> bool:
    return lt(a, b) or eq(a, b)


def gt(a: Any, b: Any) -> bool:
    return not le(a, b)


def ge(a: Any, b: Any) -> bool:
    return not lt(a, b)


def not_(a: Any) -> bool:
    return not truth(a)


def length(v: Any) -> int:
    if v is MISSING:        # Go 1.19 lets reflect panic on the invalid value; this is its text
        raise FuncError("reflect: call of reflect.Value.Type on zero Value")
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogateescape"))
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    if v is None:
        raise FuncError("len of nil pointer")
    if hasattr(v, "__len__") and not isinstance(v, (int, float, bool)):
        return len(v)
    raise FuncError("len of type %s" % go_type(v))


def _index_arg(i: Any, cap: int) -> int:
    if i is None:
        raise FuncError("cannot index slice/array with nil")
    if not isinstance(i, int) or isinstance(i, bool):
        raise FuncError("cannot index slice/array with type %s" % go_type(i))
    if i < 0 or i > cap:
        raise FuncError("index out of range: %d" % i)
    return i


def index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FuncError("index of untyped nil")
    for i in indexes:
        if item is None:
            raise FuncError("index of nil pointer")
        if isinstance(item, str):
            b = item.encode("utf-8", "surrogateescape")
            x = _index_arg(i, len(b))
            if x == len(b):
                raise FuncError("reflect: string index out of range")
            item = b[x]
        elif isinstance(item, (list, tuple)):
            x = _index_arg(i, len(item))
            if x == len(item):
                raise FuncError("reflect: slice index out of range")
            item = item[x]
        elif isinstance(item, dict):
            if i is None:
                raise FuncError("value is nil; should be of type string")
            if not isinstance(i, str) and all(isinstance(k, str) for k in item):
                raise FuncError("value has type %s; should be string" % go_type(i))
            item = item.get(i)
        else:
            raise FuncError("can't index item of type %s" % go_type(item))
    return item


def slice_(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError("too many slice indexes: %d" % len(indexes))
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        seq: Any = item.encode("utf-8", "surrogateescape")
        cap = len(seq)
    elif isinstance(item, (list, tuple)):
        seq = item
        cap = len(item)
    else:
        raise FuncError("can't slice item of type %s" % go_type(item))
    idx = [0, len(seq)]
    for j, i in enumerate(indexes):
        x = _index_arg(i, cap)
        if j < 2:
            idx[j] = x
        else:
            idx.append(x)
    if idx[0] > idx[1]:
        raise FuncError("invalid slice index: %d > %d" % (idx[0], idx[1]))
    if len(idx) == 3 and idx[1] > idx[2]:
        raise FuncError("invalid slice index: %d > %d" % (idx[1], idx[2]))
    out = seq[idx[0]:idx[1]]
    if isinstance(out, bytes):
        return out.decode("utf-8", "surrogateescape")
    return list(out)


def _eval_args(args: Any) -> str:
    """The text html, js and urlquery escape: fmt.Sprint of the arguments, nil as <no value>."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(["<no value>" if a is None else a for a in args])


def html_escape(*args: Any) -> str:
    s = _eval_args(args)
    out: List[str] = []
    for ch in s:
        if ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == "&":
            out.append("&amp;")
        elif ch == "'":
            out.append("&#39;")
        elif ch == '"':
            out.append("&#34;")
        elif ch == "\x00":
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


_JS = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026",
       "=": "\\u003D"}


def js_escape(*args: Any) -> str:
    s = _eval_args(args)
    out: List[str] = []
    for ch in s:
        e = _JS.get(ch)
        if e is not None:
            out.append(e)
        elif ch < " ":
            out.append("\\u00%02X" % ord(ch))
        elif ch >= "\x80" and not ch.isprintable():
            o = ord(ch)
            out.append("\\u%04X" % (0xFFFD if 0xD800 <= o <= 0xDFFF else o))
        else:
            out.append(ch)
    return "".join(out)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def query_escape(s: str) -> str:
    """url.QueryEscape: spaces as '+', all but unreserved bytes as %XX."""
    out: List[str] = []
    for b in s.encode("utf-8", "surrogateescape"):
        if b in _UNRESERVED:
            out.append(chr(b))
        elif b == 0x20:
            out.append("+")
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def urlquery(*args: Any) -> str:
    return query_escape(_eval_args(args))


def printf(fmt: str, *args: Any) -> str:
    return sprintf(fmt, args)


def print_(*args: Any) -> str:
    return sprint(args)


def println(*args: Any) -> str:
    return sprintln(args)


def call(fn: Any, *args: Any) -> Any:
    if fn is None:
        raise FuncError("call of nil")
    if not callable(fn):
        raise FuncError("non-function of type %s" % go_type(fn))
    return fn(*args)


def _and(*args: Any) -> Any:          # evaluated lazily by the executor
    raise AssertionError("and is evaluated by the executor")


def _or(*args: Any) -> Any:
    raise AssertionError("or is evaluated by the executor")


BUILTINS: Dict[str, Func] = {
    "and": Func(_and, 1, None, lazy=True),
    "or": Func(_or, 1, None, lazy=True),
    "not": Func(not_, 1, 1),
    "len": Func(length, 1, 1, raw=True),
    "index": Func(index, 1, None),
    "slice": Func(slice_, 1, None),
    "print": Func(print_, 0, None),
    "printf": Func(printf, 1, None, types=("string",)),
    "println": Func(println, 0, None),
    "eq": Func(eq, 1, None),
    "ne": Func(ne, 2, 2),
    "lt": Func(lt, 2, 2),
    "le": Func(le, 2, 2),
    "gt": Func(gt, 2, 2),
    "ge": Func(ge, 2, 2),
    "html": Func(html_escape, 0, None),
    "js": Func(js_escape, 0, None),
    "urlquery": Func(urlquery, 0, None),
    "call": Func(call, 1, None),
}

__all__ = ["BUILTINS", "MISSING"]
