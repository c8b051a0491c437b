"""Go's strconv quoting (Quote, QuoteToASCII, QuoteRune): the one copy that error texts, matcher
strings and templates print Go string literals with. A leaf: standard library only, so the
engine, PromQL and the Go template package may all import it."""
from __future__ import annotations

_ESC = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
        "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def quote(s: str, ascii_only: bool = False) -> str:
    """strconv.Quote (QuoteToASCII with ascii_only): a double-quoted Go string literal."""
    out = ['"']
    for ch in s:
        e = _ESC.get(ch)
        if e is not None:
            out.append(e)
        elif (ch.isprintable() or ch == " ") and not (ascii_only and ch >= "\x80"):
            out.append(ch)
        else:
            o = ord(ch)
            if 0xDC80 <= o <= 0xDCFF:          # a raw byte kept by surrogateescape
                out.append("\\x%02x" % (o - 0xDC00))
            elif o < 0x80:
                out.append("\\x%02x" % o)
            elif o < 0x10000:
                out.append("\\u%04x" % o)
            else:
                out.append("\\U%08x" % o)
    out.append('"')
    return "".join(out)


def quote_rune(r: int, ascii_only: bool = False) -> str:
    """strconv.QuoteRune: a single-quoted Go character literal."""
    ch = chr(r) if 0 <= r <= 0x10FFFF and not 0xD800 <= r <= 0xDFFF else "\ufffd"
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + quote(ch, ascii_only)[1:-1] + "'"
