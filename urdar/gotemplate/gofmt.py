"""Go's fmt printing of Python values: %v (Sprint, Sprintln) and Printf's verbs.

Python values stand for Go's dynamic types the way a template sees decoded data: None is nil,
bool, int is int, float is float64, str is string, list/tuple is []interface {}, dict is
map[string]interface {}. Other objects print with str() and are named by their class.
"""
from __future__ import annotations

import decimal
import math
import struct
from typing import Any, List, Optional, Sequence, Tuple

from urdar.gostrconv import quote, quote_rune


class Missing:
    """A map key that is absent: prints as <no value>, passes to functions as nil (Go's invalid Value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


def go_type(v: Any) -> str:
    """The Go type name fmt and text/template errors show for a value."""
    if v is None or v is MISSING:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    name = getattr(v, "go_type_name", None)
    if isinstance(name, str):
        return name
    return type(v).__name__


# ---------------------------------------------------------------- floats

def _shortest_digits(f: float) -> Tuple[str, int]:
    """Shortest round-trip decimal digits of abs(f) and the decimal point position (Go's digs.nd, digs.dp)."""
    if f == 0:
        return "0", 1
    sign, digits, exp = decimal.Decimal(repr(abs(f))).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exp, int)
    # value = 0.DIGITS * 10**dp
    dp = len(digits) + exp
    return ds, dp


def _fmt_e(neg: bool, ds: str, dp: int, prec: int, e: str) -> str:
    ds = ds.ljust(prec + 1, "0")
    mant = ds[0] + ("." + ds[1:prec + 1] if prec > 0 else "")
    x = dp - 1 if ds != "0" * len(ds) else 0
    return "%s%s%s%s%02d" % ("-" if neg else "", mant, e, "-" if x < 0 else "+", abs(x))


def _fmt_f(neg: bool, ds: str, dp: int, prec: int) -> str:
    if dp > 0:
        ip = ds[:dp].ljust(dp, "0")
    else:
        ip = "0"
    frac = ""
    if prec > 0:
        for i in range(prec):
            j = dp + i
            frac += ds[j] if 0 <= j < len(ds) else "0"
        frac = "." + frac
    return ("-" if neg else "") + ip + frac


def _float_bits(f: float) -> Tuple[bool, int, int]:
    """(negative, mantissa, exponent) with f = mantissa * 2**(exponent - 52), as strconv splits it."""
    bits = struct.unpack("<Q", struct.pack("<d", f))[0]
    neg = bits >> 63 == 1
    exp = (bits >> 52) & 0x7FF
    mant = bits & ((1 << 52) - 1)
    if exp == 0:
        exp += 1
    else:
        mant |= 1 << 52
    return neg, mant, exp - 1023


def _format_x(f: float, prec: int, upper: bool) -> str:
    """Go's hex float: sign, 0x, leading 1 (0 for zero), hex fraction, binary exponent of 2+ digits."""
    lead, frac, exp = 0, 0, 0                # |f| = (lead + frac / 2**52) * 2**exp
    if f != 0:
        m, e = math.frexp(abs(f))            # m in [0.5, 1), exact also for subnormals
        lead, frac, exp = 1, int((m * 2 - 1) * (1 << 52)), e - 1
    if 0 <= prec < 13:
        drop = 52 - 4 * prec                 # keep prec hex digits, rounding half to even
        q, r = divmod((lead << 52) | frac, 1 << drop)
        if r > 1 << (drop - 1) or (r == 1 << (drop - 1) and q & 1):
            q += 1
        if q >> (4 * prec) == 2:             # carried into the leading digit: 2.0 is 1.0p+1
            q, exp = q >> 1, exp + 1
        lead, q = q >> (4 * prec), q & ((1 << (4 * prec)) - 1)
        digits = ("%0*x" % (prec, q)) if prec else ""
    else:
        digits = "%013x" % frac
        digits = digits.rstrip("0") if prec < 0 else digits + "0" * (prec - 13)
    text = "%s0x%d%s%sp%s%02d" % ("-" if math.copysign(1.0, f) < 0 else "", lead,
                                  "." if digits else "", digits, "-" if exp < 0 else "+", abs(exp))
    return text.upper() if upper else text


def _format_b(f: float) -> str:
    """strconv's 'b' format: decimal mantissa, binary exponent (4503599627370496p-52)."""
    neg, mant, exp = _float_bits(f)
    return "%s%dp%+d" % ("-" if neg else "", mant, exp - 52)


def format_float(f: float, verb: str = "g", prec: int = -1) -> str:
    """strconv.FormatFloat(f, verb, prec, 64) for verbs b e E f F g G x X (prec -1: shortest)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if verb in "xX":
        return _format_x(f, prec, verb == "X")
    if verb == "b":
        return _format_b(f)
    neg = math.copysign(1.0, f) < 0
    if prec >= 0:
        if verb in "eE":
            s = "%.*e" % (prec, abs(f))
            s = s.replace("e", verb)
        elif verb in "fF":
            s = "%.*f" % (prec, abs(f))
        else:
            p = prec if prec > 0 else 1
            s = "%.*e" % (p - 1, abs(f))
            mant, _, ex = s.partition("e")
            ds = mant.replace(".", "").rstrip("0") or "0"
            x = int(ex)
            dp = x + 1
            eprec = p
            if eprec > len(ds) and len(ds) >= dp:
                eprec = len(ds)
            if abs(f) == 0:
                ds, dp = "0", 1
                x = 0
            if x < -4 or x >= eprec:
                q = min(p, len(ds))
                s = _fmt_e(False, ds, dp, q - 1, "e" if verb == "g" else "E")
            else:
                q = p
                if q > dp:
                    q = len(ds)
                s = _fmt_f(False, ds, dp, max(q - dp, 0))
        return ("-" if neg else "") + s
    ds, dp = _shortest_digits(f)
    if verb in "eE":
        return _fmt_e(neg, ds, dp, len(ds) - 1, verb)
    if verb in "fF":
        return _fmt_f(neg, ds, dp, max(len(ds) - dp, 0))
    x = dp - 1 if ds != "0" else 0
    if x < -4 or x >= 6:      # Go switches to %e at 6 digits when the precision is the shortest
        return _fmt_e(neg, ds, dp, len(ds) - 1, "E" if verb == "G" else "e")
    return _fmt_f(neg, ds, dp, max(len(ds) - dp, 0))


# ---------------------------------------------------------------- strings

def _can_backquote(s: str) -> bool:
    return not any(c == "`" or c == "\ufffd" or (c < " " and c != "\t") or c == "\x7f" for c in s)


# ---------------------------------------------------------------- %v

def sprint_value(v: Any) -> str:
    """fmt's %v of one operand."""
    if isinstance(v, str):
        return v
    if getattr(type(v), "go_stringer", False):     # has a Go String() method
        return str(v)
    if v is None or v is MISSING:
        return "<nil>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(sprint_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(sprint_value(k) + ":" + sprint_value(v[k]) for k in _sorted_keys(v)) + "]"
    return str(v)


def _sorted_keys(d: dict[Any, Any]) -> List[Any]:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=lambda k: (type(k).__name__, str(k)))


def sprint(args: Sequence[Any]) -> str:
    """fmt.Sprint: spaces between operands when neither side is a string."""
    out: List[str] = []
    prev_string = True
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(sprint_value(a))
        prev_string = is_string
    return "".join(out)


def sprintln(args: Sequence[Any]) -> str:
    """fmt.Sprintln: spaces between all operands and a final newline."""
    return " ".join(sprint_value(a) for a in args) + "\n"


# ---------------------------------------------------------------- Printf

class _Spec:
    __slots__ = ("minus", "plus", "sharp", "space", "zero", "wid", "prec", "sharpv")

    def __init__(self) -> None:
        self.minus = self.plus = self.sharp = self.space = self.zero = False
        self.sharpv = False     # %#v: Go syntax
        self.wid: Optional[int] = None
        self.prec: Optional[int] = None


def _pad(s: str, sp: _Spec, zero_ok: bool = True) -> str:
    if sp.wid is None or len(s) >= sp.wid:
        return s
    n = sp.wid - len(s)
    if sp.minus:
        return s + " " * n
    if sp.zero and zero_ok:
        return "0" * n + s
    return " " * n + s


def _bad(verb: str, v: Any, sp: _Spec) -> str:
    """Go's %!verb(type=value): the value printed with %v and the same flags."""
    if v is None or v is MISSING:
        return "%!" + verb + "(<nil>)"
    return "%!" + verb + "(" + go_type(v) + "=" + format_one(v, "v", sp) + ")"


def _fmt_int(v: int, verb: str, sp: _Spec) -> str:
    if verb == "c":
        return _pad(chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else "\ufffd", sp)
    if verb == "q":
        return _pad(quote_rune(v, sp.plus), sp)
    if verb == "U":
        width = 4 if sp.prec is None or sp.prec < 4 else sp.prec
        u = "U+" + ("%X" % (v & 0xFFFFFFFFFFFFFFFF)).rjust(width, "0")
        if sp.sharp and 0 <= v <= 0x10FFFF and chr(v).isprintable():
            u += " '" + chr(v) + "'"
        return _pad(u, sp, False)
    neg = v < 0
    a = -v if neg else v
    if verb in "dv":
        digits = str(a)
    elif verb == "x":
        digits = "%x" % a
    elif verb == "X":
        digits = "%X" % a
    elif verb in "oO":
        digits = "%o" % a
    elif verb == "b":
        digits = "{:b}".format(a)
    else:
        return _bad(verb, v, sp)
    if sp.prec is not None:
        if sp.prec == 0 and a == 0:
            return _pad("", sp, False)
        digits = digits.rjust(sp.prec, "0")
    elif sp.zero and sp.wid is not None and not sp.minus:
        w = sp.wid - (1 if (neg or sp.plus or sp.space) else 0)
        digits = digits.rjust(w, "0")
    if sp.sharp:
        if verb == "x":
            digits = "0x" + digits
        elif verb == "X":
            digits = "0X" + digits
        elif verb in "oO" and not digits.startswith("0"):
            digits = "0" + digits
        elif verb == "b":
            digits = "0b" + digits
    if verb == "O":
        digits = "0o" + digits
    sign = "-" if neg else ("+" if sp.plus else (" " if sp.space else ""))
    return _pad(sign + digits, sp, False)


def _sharp_float(num: str, verb: str, prec: int) -> str:
    """The # flag on floats: always a decimal point; %g and %v also keep their trailing zeros,
    padding to `prec` significant digits (6 if none was given)."""
    cut = len(num)
    for mark in ("p", "P") if verb in "xX" else ("e", "E", "p", "P"):
        i = num.find(mark)
        if i >= 0:
            cut = min(cut, i)
    mantissa, tail = num[:cut], num[cut:]
    want = 0
    if verb in "vgGx":
        want = 6 if prec == -1 else prec
        digits = mantissa[1:].replace(".", "").lstrip("0")
        want -= len(digits)
    if "." not in mantissa:
        if mantissa[1:] == "0":
            want -= 1
        mantissa += "."
    return mantissa + "0" * max(want, 0) + tail


def _fmt_float(v: float, verb: str, sp: _Spec) -> str:
    if verb not in "beEfFgGvxX":
        return _bad(verb, v, sp)
    if verb in "vbgGxX":
        prec = -1
    else:
        prec = 6
    if sp.prec is not None:
        prec = sp.prec
    fverb = {"v": "g", "F": "f"}.get(verb, verb)
    num = format_float(v, fverb, prec)
    if num[0] not in "+-":
        num = "+" + num
    if sp.space and num[0] == "+" and not sp.plus:
        num = " " + num[1:]
    if num[1] in "IN":                      # infinities and NaN are never zero padded
        if num[1] == "N" and not sp.space and not sp.plus:
            num = num[1:]
        return _pad(num, sp, False)
    if sp.sharp and verb != "b":
        num = _sharp_float(num, verb, prec)
    if sp.plus or num[0] != "+":
        if sp.zero and sp.wid is not None and sp.wid > len(num):
            return num[0] + "0" * (sp.wid - len(num)) + num[1:]
        return _pad(num, sp, False)
    return _pad(num[1:], sp)


def _fmt_str(v: str, verb: str, sp: _Spec) -> str:
    if verb in "vs" and not sp.sharpv:
        if sp.prec is not None:
            v = v[:sp.prec]
        return _pad(v, sp)
    if verb == "q" or sp.sharpv:
        v = v[:sp.prec] if sp.prec is not None else v
        if sp.sharp and _can_backquote(v):
            return _pad("`" + v + "`", sp)
        return _pad(quote(v, sp.plus), sp)
    if verb in "xX":
        b = v.encode("utf-8", "surrogateescape")
        if sp.prec is not None:
            b = b[:sp.prec]
        h = b.hex()
        if verb == "X":
            h = h.upper()
        if sp.space:
            pre = ("0X" if verb == "X" else "0x") if sp.sharp else ""
            h = " ".join(pre + h[i:i + 2] for i in range(0, len(h), 2))
        elif sp.sharp and h:
            h = ("0X" if verb == "X" else "0x") + h
        return _pad(h, sp)
    return _bad(verb, v, sp)


def _go_syntax(v: Any, sp: _Spec) -> str:
    """%#v of []interface {} and map[string]interface {} values."""
    def elem(x: Any) -> str:
        if x is None or x is MISSING:
            return "interface {}(nil)"
        return format_one(x, "v", sp)
    if isinstance(v, dict):
        return "map[string]interface {}{" + ", ".join(
            elem(k) + ":" + elem(v[k]) for k in _sorted_keys(v)) + "}"
    return "[]interface {}{" + ", ".join(elem(x) for x in v) + "}"


def format_one(v: Any, verb: str, sp: _Spec) -> str:
    if v is MISSING:
        v = None
    if v is None:
        if verb == "v":
            return _pad("<nil>", sp)
        return _bad(verb, v, sp)
    if isinstance(v, bool):
        if verb in "tv":
            return _pad("true" if v else "false", sp)
        return _bad(verb, v, sp)
    if isinstance(v, int):
        return _fmt_int(v, verb, sp)
    if isinstance(v, float):
        return _fmt_float(v, verb, sp)
    if isinstance(v, str):
        return _fmt_str(v, verb, sp)
    if getattr(type(v), "go_stringer", False) and verb in "vsqxX":
        return _fmt_str(str(v), verb, sp)
    if sp.sharpv and isinstance(v, (list, tuple, dict)):
        return _go_syntax(v, sp)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(format_one(x, verb, sp) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(format_one(k, verb, sp) + ":" + format_one(v[k], verb, sp)
                                 for k in _sorted_keys(v)) + "]"
    if verb in "vs":
        return _pad(str(v), sp)
    if verb == "q":
        return _pad(quote(str(v)), sp)
    return _bad(verb, v, sp)


_TOO_LARGE = 1000000     # fmt refuses widths and precisions beyond this


def _int_arg(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -_TOO_LARGE <= v <= _TOO_LARGE


def _parsenum(fmt: str, i: int) -> Tuple[int, bool, int]:
    """Digits at fmt[i:] as fmt's parsenum: an absurdly long number swallows the rest of the format."""
    num = 0
    present = False
    while i < len(fmt) and "0" <= fmt[i] <= "9":
        if num > _TOO_LARGE:
            return 0, False, len(fmt)
        num = num * 10 + ord(fmt[i]) - 48
        present = True
        i += 1
    return num, present, i


def sprintf(fmt: str, args: Sequence[Any]) -> str:
    """fmt.Sprintf with Go's verbs, flags, width and precision, and its %!verb(...) error forms."""
    out: List[str] = []
    n = len(fmt)
    i = 0
    argi = 0
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        sp = _Spec()
        while i < n:
            c = fmt[i]
            if c == "#":
                sp.sharp = True
            elif c == "0":
                sp.zero = not sp.minus
            elif c == "+":
                sp.plus = True
            elif c == "-":
                sp.minus = True
                sp.zero = False
            elif c == " ":
                sp.space = True
            else:
                break
            i += 1
        if i < n and fmt[i] == "*":
            i += 1
            if argi < len(args) and _int_arg(args[argi]):
                w = args[argi]
                if w < 0:
                    sp.minus = True
                    sp.zero = False
                    w = -w
                sp.wid = w
            else:
                out.append("%!(BADWIDTH)")
            argi += 1
        else:
            num, present, i = _parsenum(fmt, i)
            if present:
                sp.wid = num
        if i < n and fmt[i] == ".":
            i += 1
            if i < n and fmt[i] == "*":
                i += 1
                if argi < len(args) and _int_arg(args[argi]) and args[argi] >= 0:
                    sp.prec = args[argi]
                else:
                    out.append("%!(BADPREC)")
                argi += 1
            else:
                num, present, i = _parsenum(fmt, i)
                sp.prec = num
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append("%!" + verb + "(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        if verb == "v":
            # %#v is Go syntax and %+v names struct fields: neither is the # or + of numbers
            if sp.sharp:
                sp.sharp, sp.sharpv = False, True
            sp.plus = False
        if verb == "T":
            out.append(_pad("<nil>", sp) if arg is None or arg is MISSING
                       else _fmt_str(go_type(arg), "s", sp))
        else:
            out.append(format_one(arg, verb, sp))
    if argi < len(args):
        extra = []
        for a in args[argi:]:
            extra.append("<nil>" if a is None or a is MISSING else go_type(a) + "=" + sprint_value(a))
        out.append("%!(EXTRA " + ", ".join(extra) + ")")
    return "".join(out)

