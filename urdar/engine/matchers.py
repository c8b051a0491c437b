"""Prometheus label matchers and the postings they select, shared by the head and blocks.

A `Matcher` is one `name op "value"` term of a selector (ops `=`, `!=`, `=~`, `!~`; a
missing label has value ""). Regexes are RE2 syntax, fully anchored, with `.` matching a
newline (Prometheus compiles `^(?s:re)$`): `Regex` parses the pattern itself to refuse
invalid input with Go's error text and to pick a fast path (literal set, prefix/suffix/
contains, `.*`, case-insensitive set); everything else, and label_replace's captures, runs
on the RE2 library (linear time, GIL released while matching). This is the one place a
user's regex is compiled: selectors and PromQL functions both come here.
`postings_for_matchers` turns a selector into a sorted array of refs over any index object
(head or block reader) through `postings.pyx`; `label_names_for`/`label_values_for` serve
the /labels and /label/<name>/values endpoints."""
import bisect
import functools
import re
import unicodedata
from array import array

import re2
from re2 import _re2  # the binding's C++ layer: a bare match without building a match object

from urdar.engine import postings as _pst
from urdar.engine.errors import RegexError, UnsupportedRegexError
from urdar.gostrconv import quote

__all__ = ["Matcher", "Regex", "postings_for_matchers", "label_names_for", "label_values_for",
           "MATCH_EQUAL", "MATCH_NOT_EQUAL", "MATCH_REGEXP", "MATCH_NOT_REGEXP"]

MATCH_EQUAL, MATCH_NOT_EQUAL, MATCH_REGEXP, MATCH_NOT_REGEXP = "=", "!=", "=~", "!~"
_KINDS = (MATCH_EQUAL, MATCH_NOT_EQUAL, MATCH_REGEXP, MATCH_NOT_REGEXP)

MAX_RUNE = 0x10FFFF
# Like Prometheus' maxSetMatches: a regex expanding to more literal values uses the matcher.
MAX_SET_MATCHES = 256
# Go's parser refuses deeper nesting at 1000; Python recursion forces a lower bound here.
_MAX_NESTING = 200
# Go's bound on one repeat count and on the product of nested counts.
_MAX_REPEAT = 1000

# ---- character sets as sorted, disjoint, non-adjacent (lo, hi) code point ranges ----------


def _norm(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _negate(ranges):
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_RUNE:
        out.append((nxt, MAX_RUNE))
    return out


def _contains(ranges, cp):
    i = bisect.bisect_right(ranges, (cp, MAX_RUNE + 1)) - 1
    return i >= 0 and ranges[i][0] <= cp <= ranges[i][1]


def _size(ranges):
    return sum(hi - lo + 1 for lo, hi in ranges)


_ANY = [(0, MAX_RUNE)]
_ANY_NOT_NL = [(0, 9), (11, MAX_RUNE)]
# RE2's Perl classes are ASCII-only (Python's \d, \s, \w would be Unicode).
_PERL = {"d": [(0x30, 0x39)],
         "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
         "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]}
_POSIX = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
# Go's general categories; its "C" is Cc|Cf|Co|Cs (unassigned code points excluded).
_CATEGORY_GROUPS = {"L": ("Lu", "Ll", "Lt", "Lm", "Lo"), "M": ("Mn", "Mc", "Me"),
                    "N": ("Nd", "Nl", "No"), "P": ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"),
                    "S": ("Sm", "Sc", "Sk", "So"), "Z": ("Zs", "Zl", "Zp"), "C": ("Cc", "Cf", "Co", "Cs")}


@functools.lru_cache(maxsize=None)
def _category_table():
    """Ranges of each two-letter general category from Python's unicodedata (built once,
    ~0.3 s, the first time a regex uses \\p)."""
    table, start, prev = {}, 0, unicodedata.category("\0")
    for cp in range(1, MAX_RUNE + 2):
        cat = unicodedata.category(chr(cp)) if cp <= MAX_RUNE else None
        if cat != prev:
            table.setdefault(prev, []).append((start, cp - 1))
            start, prev = cp, cat
    return table


def _unicode_class(name):
    if name == "Any":
        return _ANY
    table = _category_table()
    if name in _CATEGORY_GROUPS:
        return _norm(r for sub in _CATEGORY_GROUPS[name] for r in table.get(sub, ()))
    if len(name) == 2 and name[0] in _CATEGORY_GROUPS and name != "Cn" and name in table:
        return table[name]
    return None


@functools.lru_cache(maxsize=None)
def _fold_tables():
    """Simple case-folding orbits (Go's unicode.SimpleFold): code point -> orbit key and
    key -> sorted orbit members. Only code points below U+20000 have case."""
    key_of, orbits = {}, {}
    for cp in range(0x20000):
        c = chr(cp)
        f = c.casefold()
        if len(f) != 1:
            f = c.lower()
            if len(f) != 1:
                f = c
        if f != c or c.upper() != c or c.lower() != c:
            orbits.setdefault(f, set()).add(cp)
            orbits[f].add(ord(f))
    for k, members in orbits.items():
        if len(members) > 1:
            for cp in members:
                key_of[cp] = k
    return key_of, {k: sorted(m) for k, m in orbits.items() if len(m) > 1}


def _orbit(cp):
    key_of, orbits = _fold_tables()
    k = key_of.get(cp)
    return orbits[k] if k is not None else [cp]


def _fold_key(s):
    """A string equal for two inputs exactly when they match each other case-insensitively."""
    key_of = _fold_tables()[0]
    return "".join(key_of.get(ord(c), c) for c in s)


def _fold_ranges(ranges):
    """Add every case variant of the members of ranges (what (?i) does to a class)."""
    key_of, orbits = _fold_tables()
    extra = []
    for cp, k in key_of.items():
        if _contains(ranges, cp):
            extra.extend((o, o) for o in orbits[k])
    return _norm(list(ranges) + extra) if extra else ranges


def _first_surrogate(s):
    """Index of the first lone surrogate in s (an undecodable byte kept by surrogateescape), or -1."""
    try:
        s.encode("utf-8")
        return -1
    except UnicodeEncodeError as exc:
        return exc.start


def _valid_utf8(s):
    """s with undecodable bytes as U+FFFD, as Go's regexp reads invalid UTF-8 input."""
    if _first_surrogate(s) < 0:
        return s
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


# A character class whose members Python cannot enumerate (a Unicode script); it takes no
# fast path and is left to RE2.
_OPAQUE = object()


@functools.lru_cache(maxsize=256)
def _is_script(name):
    """Whether \\p{name} is a Unicode script RE2 knows (Go accepts the same script names)."""
    if not _SCRIPT_NAME.match(name):
        return False
    try:
        re2.compile("\\p{%s}" % name, _options(False))
    except re2.error:
        return False
    return True


def _options(capture):
    opts = re2.Options()
    opts.log_errors = False  # the error reaches the user; RE2's own stderr log is noise
    opts.never_capture = not capture
    return opts


def _repeat_is_valid(node, n):
    """Go's repeatIsValid: the product of nested {n,m} counts stays within n."""
    op = node[0]
    if op == "repeat":
        lo, hi = node[2], node[3]
        if hi == 0:
            return True
        m = lo if hi is None else hi
        if m > n:
            return False
        if m > 0:
            n //= m
        return _repeat_is_valid(node[1], n)
    if op == "group":
        return _repeat_is_valid(node[1], n)
    if op in ("concat", "alt"):
        return all(_repeat_is_valid(sub, n) for sub in node[1])
    return True


# ---- syntax tree -----------------------------------------------------------------------
# Nodes are tuples: ("lit", text, fold), ("class", ranges), ("opaque",) (a class of unknown
# members), ("empty",), ("concat", [n]),
# ("alt", [n]), ("group", n, name-or-None-or-False), ("repeat", n, min, max|None, greedy),
# ("assert", kind) with kind in bot, eot, bol, eol, wordb, nwordb. group name False = no capture.

_FLAG_I, _FLAG_M, _FLAG_S, _FLAG_U = 1, 2, 4, 8
_FLAG_BITS = {"i": _FLAG_I, "m": _FLAG_M, "s": _FLAG_S, "U": _FLAG_U}
_WORD_NAME = re.compile(r"[0-9A-Za-z_]+\Z")
_SCRIPT_NAME = re.compile(r"[A-Z][A-Za-z_]+\Z")
# Our own fixed patterns for the tokenizer; a user's pattern itself only ever reaches RE2.
_REPEAT_OP = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")
_HEX = re.compile(r"[0-9A-Fa-f]+\Z")


class _Parser:
    """Recursive descent over RE2 syntax with Go's Perl flags plus DotNL (Prometheus)."""

    def __init__(self, src):
        self.src = src
        self.pos = 0
        self.flags = _FLAG_S
        self.depth = 0
        self.names = set()
        self.open_quote = False  # a \Q with no \E: literal text up to the end of the pattern

    def fail(self, code, expr):
        raise RegexError(code, expr)

    def parse(self):
        bad = _first_surrogate(self.src)
        if bad >= 0:
            self.fail("invalid UTF-8", self.src[bad:])
        node = self.alt()
        if self.pos < len(self.src):  # only a stray ')' stops alt() early at top level
            self.fail("unexpected )", self.src)
        return node

    def alt(self):
        branches = [self.concat()]
        while self.pos < len(self.src) and self.src[self.pos] == "|":
            self.pos += 1
            branches.append(self.concat())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concat(self):
        items = []
        last_repeat = None  # start of the previous repetition operator, for a** errors
        src = self.src
        while self.pos < len(src):
            c = src[self.pos]
            if c in "|)":
                break
            start = self.pos
            if c in "*+?{":
                rep = self.repeat_op()
                if rep is not None:
                    lo, hi = rep
                    if last_repeat is not None:
                        self.fail("invalid nested repetition operator", src[last_repeat:self.pos])
                    if not items or items[-1][0] == "flags":
                        self.fail("missing argument to repetition operator", src[start:self.pos])
                    lazy = False
                    if self.pos < len(src) and src[self.pos] == "?":
                        self.pos += 1
                        lazy = True
                    greedy = lazy == bool(self.flags & _FLAG_U)
                    items[-1] = ("repeat", items[-1], lo, hi, greedy)
                    if (lo >= 2 or (hi or 0) >= 2) and not _repeat_is_valid(items[-1], _MAX_REPEAT):
                        self.fail("invalid repeat count", src[start:self.pos])
                    last_repeat = start
                    continue
                # '{' that does not start a valid repeat is a literal
            last_repeat = None
            node = self.atom()
            if node is not None:
                items.append(node)
        items = [n for n in items if n[0] != "flags"]
        if not items:
            return ("empty",)
        return items[0] if len(items) == 1 else ("concat", items)

    def repeat_op(self):
        """Parse *, +, ? or {n}, {n,}, {n,m} at pos; None (pos unchanged) for a literal '{'."""
        src, c = self.src, self.src[self.pos]
        if c != "{":
            self.pos += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        m = _REPEAT_OP.match(src, self.pos)
        if not m:
            return None
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        if lo > _MAX_REPEAT or (hi is not None and (hi > _MAX_REPEAT or hi < lo)):
            self.fail("invalid repeat count", m.group(0))
        self.pos = m.end()
        return lo, hi

    def atom(self):
        c = self.src[self.pos]
        f = self.flags
        if c == "(":
            return self.group()
        if c == "[":
            cls = self.char_class()
            return ("opaque",) if cls is _OPAQUE else ("class", cls)
        self.pos += 1
        if c == ".":
            return ("class", _ANY if f & _FLAG_S else _ANY_NOT_NL)
        if c == "^":
            return ("assert", "bol" if f & _FLAG_M else "bot")
        if c == "$":
            return ("assert", "eol" if f & _FLAG_M else "eot")
        if c == "\\":
            return self.escape()
        return self.literal(ord(c))

    def literal(self, cp):
        return ("lit", chr(cp), bool(self.flags & _FLAG_I))

    def group(self):
        src, start = self.src, self.pos
        self.depth += 1
        if self.depth > _MAX_NESTING:
            self.fail("expression nests too deeply", src)
        name = None
        if src.startswith("(?", start):
            if src.startswith("(?P<", start) or (src.startswith("(?<", start) and not src.startswith(("(?<=", "(?<!"), start)):
                open_at = src.index("<", start) + 1
                close = src.find(">", open_at)
                if close < 0:
                    self.fail("invalid named capture", src[start:])
                name = src[open_at:close]
                if not _WORD_NAME.match(name):
                    self.fail("invalid named capture", src[start:close + 1])
                if name in self.names:
                    self.fail("duplicate capture group name", src[start:close + 1])
                self.names.add(name)
                self.pos = close + 1
            else:
                return self.flag_group()
        else:
            self.pos += 1
        saved = self.flags
        inner = self.alt()
        if self.pos >= len(src) or src[self.pos] != ")":
            self.fail("missing closing )", src)
        self.pos += 1
        self.flags = saved
        self.depth -= 1
        return ("group", inner, name)

    def flag_group(self):
        """(?flags) changes flags to the end of the enclosing group; (?flags:re) only inside."""
        src, start = self.src, self.pos
        i, neg, seen, flags = start + 2, False, False, self.flags
        while i < len(src):
            c = src[i]
            if c in _FLAG_BITS:
                flags = flags & ~_FLAG_BITS[c] if neg else flags | _FLAG_BITS[c]
                seen = True
            elif c == "-" and not neg:
                neg, seen = True, False
            elif c in ":)" and (seen or not neg):  # Go accepts (?) and (?:, not (?-)
                break
            else:
                self.fail("invalid or unsupported Perl syntax", src[start:i + 1])
            i += 1
        else:
            self.fail("missing closing )", src)
        self.pos = i + 1
        if src[i] == ")":
            self.flags = flags
            self.depth -= 1
            return ("flags",)
        saved, self.flags = self.flags, flags
        inner = self.alt()
        if self.pos >= len(src) or src[self.pos] != ")":
            self.fail("missing closing )", src)
        self.pos += 1
        self.flags = saved
        self.depth -= 1
        return ("group", inner, False)

    def escape(self):
        """After a backslash outside a class."""
        src, start = self.src, self.pos - 1
        if self.pos >= len(src):
            self.fail("trailing backslash at end of expression", "")
        c = src[self.pos]
        if c in "AzbB":
            self.pos += 1
            return ("assert", {"A": "bot", "z": "eot", "b": "wordb", "B": "nwordb"}[c])
        if c == "Q":
            end = src.find("\\E", self.pos + 1)
            text = src[self.pos + 1:] if end < 0 else src[self.pos + 1:end]
            self.open_quote = end < 0
            self.pos = len(src) if end < 0 else end + 2
            if not text:
                return None
            items = [self.literal(ord(ch)) for ch in text]
            return items[0] if len(items) == 1 else ("group", ("concat", items), False)
        cls = self.class_escape(start)
        if cls is _OPAQUE:
            return ("opaque",)
        if cls is not None:
            return ("class", _fold_ranges(cls) if self.flags & _FLAG_I else cls)
        return self.literal(self.char_escape(start))

    def class_escape(self, start):
        """\\d \\D \\s \\S \\w \\W \\pX \\p{X} \\PX at pos (after the backslash) or None."""
        src = self.src
        c = src[self.pos]
        if c.lower() in _PERL:
            self.pos += 1
            r = _PERL[c.lower()]
            return _negate(r) if c.isupper() else r
        if c not in "pP":
            return None
        neg = c == "P"
        self.pos += 1
        if self.pos >= len(src):
            self.fail("invalid character class range", src[start:])
        if src[self.pos] == "{":
            end = src.find("}", self.pos)
            if end < 0:
                self.fail("invalid character class range", src[start:])
            name = src[self.pos + 1:end]
            self.pos = end + 1
        else:
            name = src[self.pos]
            self.pos += 1
        expr = src[start:self.pos]
        if name.startswith("^"):
            neg, name = not neg, name[1:]
        r = _unicode_class(name)
        if r is None:
            if not _is_script(name):
                self.fail("invalid character class range", expr)
            return _OPAQUE  # a script: RE2 knows its ranges, Python's unicodedata does not
        return _negate(r) if neg else r

    def char_escape(self, start):
        """A single escaped code point at pos (after the backslash)."""
        src = self.src
        c = src[self.pos]
        self.pos += 1
        if c in "1234567" and not (self.pos < len(src) and src[self.pos] in "01234567"):
            self.fail("invalid escape sequence", src[start:self.pos])  # a backreference
        if c in "01234567":
            v, n = int(c), 1
            while n < 3 and self.pos < len(src) and src[self.pos] in "01234567":
                v = v * 8 + int(src[self.pos])
                self.pos += 1
                n += 1
            return v
        if c == "x":
            if src.startswith("{", self.pos):
                end = src.find("}", self.pos)
                digits = src[self.pos + 1:end] if end > 0 else ""
                if end < 0 or not digits or not _HEX.match(digits) or int(digits, 16) > MAX_RUNE:
                    self.fail("invalid escape sequence", src[start:(end + 1 if end > 0 else len(src))])
                self.pos = end + 1
                return int(digits, 16)
            digits = src[self.pos:self.pos + 2]
            if len(digits) != 2 or not _HEX.match(digits):
                self.fail("invalid escape sequence", src[start:self.pos + len(digits)])
            self.pos += 2
            return int(digits, 16)
        simple = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}
        if c in simple:
            return simple[c]
        if ord(c) < 0x80 and not c.isalnum():
            return ord(c)
        self.fail("invalid escape sequence", src[start:self.pos])

    def char_class(self):
        """[...] at pos; returns its ranges (folded under (?i), negated for [^...])."""
        src, start = self.src, self.pos
        self.pos += 1
        neg = src.startswith("^", self.pos)
        if neg:
            self.pos += 1
        ranges, first, opaque = [], True, False
        while True:
            if self.pos >= len(src):
                self.fail("missing closing ]", src[start:])
            c = src[self.pos]
            if c == "]" and not first:
                self.pos += 1
                break
            first = False
            if src.startswith("[:", self.pos):
                end = src.find(":]", self.pos + 2)
                if end >= 0:
                    name = src[self.pos + 2:end]
                    pneg = name.startswith("^")
                    r = _POSIX.get(name[1:] if pneg else name)
                    if r is None:
                        self.fail("invalid character class range", src[self.pos:end + 2])
                    ranges.extend(_negate(r) if pneg else r)
                    self.pos = end + 2
                    continue
            if c == "\\":
                esc = self.pos
                self.pos += 1
                if self.pos >= len(src):
                    self.fail("missing closing ]", src[start:])
                r = self.class_escape(esc)
                if r is _OPAQUE:
                    opaque = True
                    continue
                if r is not None:
                    ranges.extend(r)
                    continue
                self.pos = esc
            lo_at = self.pos
            lo = self.class_char(start)
            if src.startswith("-", self.pos) and self.pos + 1 < len(src) and src[self.pos + 1] != "]":
                self.pos += 1
                hi = self.class_char(start)
                if hi < lo:
                    self.fail("invalid character class range", src[lo_at:self.pos])
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        if opaque:
            return _OPAQUE
        ranges = _norm(ranges)
        if self.flags & _FLAG_I:
            ranges = _fold_ranges(ranges)
        return _negate(ranges) if neg else ranges

    def class_char(self, class_start):
        src = self.src
        if self.pos >= len(src):
            self.fail("missing closing ]", src[class_start:])
        c = src[self.pos]
        self.pos += 1
        if c != "\\":
            return ord(c)
        if self.pos >= len(src):
            self.fail("missing closing ]", src[class_start:])
        return self.char_escape(self.pos - 1)


# ---- analysis for fast paths -----------------------------------------------------------


def _strip_groups(node):
    """The same tree without groups (captures do not change what matches)."""
    op = node[0]
    if op == "group":
        return _strip_groups(node[1])
    if op in ("concat", "alt"):
        subs = [_strip_groups(n) for n in node[1]]
        if op == "concat":  # flatten and join adjacent case-sensitive literals
            flat = []
            for n in subs:
                for m in (n[1] if n[0] == "concat" else [n]):
                    if m[0] == "empty":
                        continue
                    if m[0] == "lit" and flat and flat[-1][0] == "lit" and flat[-1][2] == m[2]:
                        flat[-1] = ("lit", flat[-1][1] + m[1], m[2])
                    else:
                        flat.append(m)
            if not flat:
                return ("empty",)
            return flat[0] if len(flat) == 1 else ("concat", flat)
        return ("alt", subs)
    if op == "repeat":
        return ("repeat", _strip_groups(node[1])) + node[2:]
    return node


def _strip_text_anchors(node):
    """Drop \\A / ^ at the very start and \\z / $ at the very end: the match is anchored anyway."""
    if node == ("assert", "bot") or node == ("assert", "eot"):
        return ("empty",)
    if node[0] == "concat":
        items = list(node[1])
        while items and items[0] == ("assert", "bot"):
            items.pop(0)
        while items and items[-1] == ("assert", "eot"):
            items.pop()
        if not items:
            return ("empty",)
        return items[0] if len(items) == 1 else ("concat", items)
    if node[0] == "alt":
        return ("alt", [_strip_text_anchors(n) for n in node[1]])
    return node


def _literal_values(node):
    """The finite set of strings node matches (at most MAX_SET_MATCHES), or None."""
    op = node[0]
    if op == "empty":
        return {""}
    if op == "lit":
        if node[2] and any(len(_orbit(ord(c))) > 1 for c in node[1]):
            return None
        return {node[1]}
    if op == "class":
        if _size(node[1]) > MAX_SET_MATCHES:
            return None
        return {chr(cp) for lo, hi in node[1] for cp in range(lo, hi + 1)}
    if op == "alt":
        out = set()
        for n in node[1]:
            v = _literal_values(n)
            if v is None:
                return None
            out |= v
            if len(out) > MAX_SET_MATCHES:
                return None
        return out
    if op == "concat":
        out = {""}
        for n in node[1]:
            v = _literal_values(n)
            if v is None or len(out) * len(v) > MAX_SET_MATCHES:
                return None
            out = {a + b for a in out for b in v}
        return out
    if op == "repeat":
        _, sub, lo, hi, _g = node
        if hi is None or hi > 16:
            return None
        v = _literal_values(sub)
        if v is None:
            return None
        out, cur = set(), {""}
        for i in range(hi + 1):
            if i >= lo:
                out |= cur
            if len(out) > MAX_SET_MATCHES:
                return None
            if i < hi:
                if len(cur) * len(v) > MAX_SET_MATCHES:
                    return None
                cur = {a + b for a in cur for b in v}
        return out
    return None


def _is_any(node, min_len):
    return (node[0] == "repeat" and node[1] == ("class", _ANY) and node[2] == min_len
            and node[3] is None)


def _glob(node):
    """For a concat of case-sensitive literals and `.*` / `.+`: a list of (gap_min, literal)
    pieces plus whether the end is open, or None. `foo.*bar` -> [(0,'foo'),(0,'bar')], False,
    with the first literal anchored at the start when it has no gap before it."""
    items = node[1] if node[0] == "concat" else [node]
    pieces, gap = [], None
    for n in items:
        if n[0] == "lit" and not n[2]:
            pieces.append((gap, n[1]))
            gap = None
        elif _is_any(n, 0) or _is_any(n, 1):
            gap = (gap or 0) + n[2]
        else:
            return None
    return pieces, gap


def _glob_matcher(pieces, tail_gap):
    """Greedy leftmost matching of literal pieces separated by `.*`/`.+` gaps."""
    if not pieces:
        need = tail_gap or 0
        return lambda s: len(s) >= need
    head_anchored = pieces[0][0] is None
    if len(pieces) == 1 and head_anchored and tail_gap is None:
        lit = pieces[0][1]
        return lambda s: s == lit
    last_gap, last = pieces[-1]
    if tail_gap is None and len(pieces) == 1:
        n0 = last_gap
        return lambda s: s.endswith(last) and len(s) >= n0 + len(last)
    if head_anchored and tail_gap is not None and len(pieces) == 1:
        lit, tg = pieces[0][1], tail_gap
        return lambda s: s.startswith(lit) and len(s) >= len(lit) + tg
    if not head_anchored and tail_gap is not None and len(pieces) == 1:
        g, lit, tg = pieces[0][0], pieces[0][1], tail_gap
        if g == 0 and tg == 0:
            return lambda s: lit in s
        return lambda s: s.find(lit, g, len(s) - tg) >= 0

    def match(s):
        pos, end = 0, len(s)
        body = pieces
        if tail_gap is None:  # the last literal must end the string
            body = pieces[:-1]
            end = len(s) - len(last)
            if end < 0 or not s.endswith(last):
                return False
            end -= last_gap  # room for the gap before it
        for idx, (g, lit) in enumerate(body):
            if g is None:
                if not s.startswith(lit):
                    return False
                pos = len(lit)
                continue
            at = s.find(lit, pos + g)
            if at < 0:
                return False
            pos = at + len(lit)
        limit = end if tail_gap is None else len(s) - tail_gap
        return pos <= limit
    return match


_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH
_NO_MATCH = (-1, -1)


def _re2_compile(pattern, capture):
    """RE2 over Prometheus' anchoring `^(?s:pattern)$`; RE2's refusals in Go's words.
    Only patterns our parser accepted come here, so a refusal is a resource limit.
    With capture, the `re2` module's pattern object (match objects with groups); without,
    the bare C++ RE2 object, whose Match() answers from the DFA alone (a few us per value,
    half the cost of the module's fullmatch on label-value scans)."""
    anchored = "^(?s:" + pattern + ")$"
    try:
        if capture:
            return re2.compile(anchored, _options(True))
        rx = _re2.RE2(anchored.encode("utf-8"), _options(False))
        if not rx.ok():
            raise re2.error(rx.error())
        return rx
    except re2.error as exc:
        msg = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        if "too large" in msg or "too big" in msg:
            raise RegexError("expression too large", pattern) from None
        if "repetition size" in msg:
            raise RegexError("invalid repeat count", pattern) from None
        raise UnsupportedRegexError("unsupported by urdar: RE2 refuses it (%s)" % msg, pattern) from None


class _Captures:
    """The capturing RE2 program for label_replace: `fullmatch(s)` gives a match object with
    Go's group numbering and names (`group(i)`, `group(name)`, `re.groups`) or None."""

    __slots__ = ("_rx",)

    def __init__(self, rx):
        self._rx = rx

    @property
    def groups(self):
        return self._rx.groups

    def fullmatch(self, s):
        return self._rx.fullmatch(_valid_utf8(s))


class Regex:
    """An RE2 pattern compiled with Prometheus' matcher semantics (fully anchored, `.`
    matches newline). `matches(s)` runs the fastest equivalent check; `literal_values()`
    is the finite set of strings it matches, or None; `compiled` `fullmatch`es the same
    strings with RE2 and returns its capture groups (for label_replace).

    Raises RegexError (a ValueError) with Go's text for invalid syntax and
    UnsupportedRegexError for valid Go syntax the RE2 library still refuses."""

    __slots__ = ("pattern", "kind", "prefix", "_re2", "_re2_source", "_compiled", "_values", "_fn",
                 "_tree")

    def __init__(self, pattern):
        self.pattern = pattern
        parser = _Parser(pattern)
        tree = parser.parse()
        self._tree = tree
        # Prometheus parses the pattern on its own before anchoring it: an open \Q must not
        # swallow the anchoring suffix.
        self._re2_source = pattern + "\\E" if parser.open_quote else pattern
        # Compiled even when a fast path answers, so RE2's limits are checked up front;
        # without captures RE2 can answer from its DFA alone.
        self._re2 = _re2_compile(self._re2_source, False)
        self._compiled = None
        plain = _strip_text_anchors(_strip_groups(tree))
        self._values = _literal_values(plain)
        self._fn, self.kind = self._choose(plain)
        # what every match starts with ("" when nothing is known): in a sorted value list the
        # candidates are one contiguous run
        first = plain[1][0] if plain[0] == "concat" else plain
        self.prefix = first[1] if first[0] == "lit" and not first[2] else ""

    @property
    def compiled(self):
        if self._compiled is None:
            self._compiled = _Captures(_re2_compile(self._re2_source, True))
        return self._compiled

    def _re2_matches(self, s):
        # The binding releases the GIL inside Match: a long value does not stop other threads.
        try:
            b = s.encode("utf-8")
        except UnicodeEncodeError:
            b = _valid_utf8(s).encode("utf-8")
        return self._re2.Match(_ANCHOR_BOTH, b, 0, len(b))[0] != _NO_MATCH

    def _choose(self, plain):
        vals = self._values
        if vals is not None:
            if len(vals) == 1:
                (only,) = vals
                return (lambda s: s == only), "literal"
            fs = frozenset(vals)
            return fs.__contains__, "set"
        branches = plain[1] if plain[0] == "alt" else [plain]
        if all(b[0] == "lit" and b[2] for b in branches):
            keys = frozenset(_fold_key(b[1]) for b in branches)
            return (lambda s: _fold_key(s) in keys), "fold_set"
        fns = []
        for b in branches:
            g = _glob(b)
            if g is None:
                break
            fns.append(_glob_matcher(*g))
        else:
            if len(fns) == 1:
                pieces, tail = _glob(branches[0])
                if not pieces:
                    return fns[0], ("any" if not tail else "nonempty" if tail == 1 else "minlen")
                return fns[0], "glob"
            return (lambda s: any(f(s) for f in fns)), "glob_alternation"
        # General case: RE2, behind a cheap literal-prefix check when there is one.
        first = plain[1][0] if plain[0] == "concat" else None
        fm = self._re2_matches
        if first is not None and first[0] == "lit" and not first[2]:
            prefix = first[1]
            return (lambda s: s.startswith(prefix) and fm(s)), "regex"
        return fm, "regex"

    def matches(self, s):
        return self._fn(s)

    def literal_values(self):
        """Frozen set of every string the regex matches if finite and small (<= 256), else None."""
        return None if self._values is None else frozenset(self._values)

    def __repr__(self):
        return "Regex(%r)" % (self.pattern,)


# Patterns up to this many characters are cached: the selectors of dashboards recur query after
# query, while a tenant sending thousands of distinct megabyte patterns must not make the cache
# (4096 entries) hold gigabytes.
CACHED_PATTERN_CHARS = 4096


def compile_regex(pattern):
    """Regex(pattern), cached when the pattern is short."""
    if len(pattern) > CACHED_PATTERN_CHARS:
        return Regex(pattern)
    return _compile_cached(pattern)


@functools.lru_cache(maxsize=4096)
def _compile_cached(pattern):
    return Regex(pattern)


class Matcher:
    """One label matcher: `kind` is "=", "!=", "=~" or "!~"; a missing label reads as "".

    Raises ValueError for an unknown kind and RegexError for an invalid regex."""

    __slots__ = ("kind", "name", "value", "_regex", "_matches_empty")

    def __init__(self, kind, name, value):
        if kind not in _KINDS:
            raise ValueError("unknown matcher type %r" % (kind,))
        self.kind = kind
        self.name = name
        self.value = value
        self._regex = compile_regex(value) if kind in (MATCH_REGEXP, MATCH_NOT_REGEXP) else None
        self._matches_empty = self.matches("")

    @property
    def negative(self):
        """True for != and !~."""
        return self.kind in (MATCH_NOT_EQUAL, MATCH_NOT_REGEXP)

    @property
    def regex(self):
        """The compiled Regex of =~ / !~ matchers, else None."""
        return self._regex

    def matches(self, value):
        """Whether a series whose label `name` has `value` ("" if absent) is selected."""
        k = self.kind
        if k == MATCH_EQUAL:
            return value == self.value
        if k == MATCH_NOT_EQUAL:
            return value != self.value
        if k == MATCH_REGEXP:
            return self._regex._fn(value)
        return not self._regex._fn(value)

    def matches_empty(self):
        """Whether the matcher selects series that lack the label."""
        return self._matches_empty

    def literal_values(self):
        """The finite set of values the pattern (equality value or regex) matches, or None.

        Negation is not applied: for != and !~ these are the values that are rejected."""
        if self._regex is None:
            return frozenset((self.value,))
        return self._regex.literal_values()

    def is_match_all(self):
        """True when the underlying pattern accepts every value (`.*`)."""
        return self._regex is not None and self._regex.kind == "any"

    def __eq__(self, other):
        return isinstance(other, Matcher) and (self.kind, self.name, self.value) == (other.kind, other.name, other.value)

    def __hash__(self):
        return hash((self.kind, self.name, self.value))

    def __str__(self):
        return "%s%s%s" % (self.name, self.kind, quote(self.value))

    def __repr__(self):
        return "Matcher(%r, %r, %r)" % (self.kind, self.name, self.value)


# ---- selecting postings ----------------------------------------------------------------


def _empty_like(ix):
    tc = getattr(ix, "postings_typecode", None)
    if tc is not None:
        return _pst.union_many([], typecode=tc)
    return ix.all_postings()[:0]


def _postings_for_values(ix, name, values):
    values = list(values)
    if len(values) == 1:
        return ix.postings(name, values[0])
    pfv = getattr(ix, "postings_for_values", None)
    if pfv is not None:
        return pfv(name, values)
    lists = [ix.postings(name, v) for v in values]
    if not lists:
        return None
    return _pst.union_many(lists)


def _values_where(ix, m, want):
    """Label values v of m.name (present in the index) with m.matches(v) == want, without
    calling matches() on every value when the pattern's literal set is known."""
    lit = m.literal_values()
    pattern_true = not m.negative  # matches() == pattern-matches for positive kinds
    if lit is not None:
        if want == pattern_true:
            return sorted(v for v in lit if v != "")
        lit = frozenset(lit)
        return [v for v in ix.label_values(m.name) if v not in lit]
    if m._regex is not None:
        kind = m._regex.kind
        if kind == "any":
            return [] if want != pattern_true else ix.label_values(m.name)
        if kind == "nonempty":
            return ix.label_values(m.name) if want == pattern_true else []
        if m._regex.prefix and want == pattern_true:
            return [v for v in _values_with_prefix(ix, m.name, m._regex.prefix) if m.matches(v) == want]
    return [v for v in ix.label_values(m.name) if m.matches(v) == want]


def _values_with_prefix(ix, name, prefix):
    """The label values of `name` that start with `prefix` (a run of the sorted list): a
    regex with a literal prefix is tried on those alone, not on every value."""
    hook = getattr(ix, "label_values_with_prefix", None)
    if hook is not None:
        return hook(name, prefix)    # the head: the others are never made strings
    values = ix.label_values(name)
    lo = hi = bisect.bisect_left(values, prefix)
    n = len(values)
    while hi < n and values[hi].startswith(prefix):
        hi += 1
    return values[lo:hi]


def _needs_scan(m):
    """True when m's accepted values can only be found by running it on every label value."""
    if m._regex is None or m._regex._values is not None:
        return False
    return m._regex.kind not in ("any", "nonempty")


def _filter_by_labels(base, m, series_labels):
    name, fn = m.name, m.matches
    return array(base.typecode, [r for r in base if fn(series_labels(r).get(name, ""))])


# A regex that must be run on every value of its label is instead run on the labels of
# the series selected so far when they are at most this many times the number of values.
SERIES_FILTER_RATIO = 1


def postings_for_matchers(ix, matchers):
    """Sorted array of the refs of every series selected by all matchers (Prometheus'
    PostingsForMatchers). `ix` provides label_values(name) -> sorted list[str],
    postings(name, value) -> sorted array (empty if none), all_postings() -> array, and
    optionally postings_for_values(name, values), series_labels(ref) -> dict and a
    `postings_typecode` attribute. The result is always a new array.

    Matchers that do not match "" intersect the postings of the values they accept;
    matchers that match "" subtract the postings of the values they reject; with no
    intersecting matcher the base is all postings. No matchers select every series."""
    positive, negative = [], []
    for m in matchers:
        if m.name == "":
            # No series has a label with an empty name: its value is always "".
            if m.matches_empty():
                continue
            return _empty_like(ix)
        if m.matches_empty():
            negative.append(m)
        else:
            positive.append(m)
    series_labels = getattr(ix, "series_labels", None)
    positive.sort(key=_needs_scan)  # direct lookups first, value scans last

    lists, deferred = [], []
    for m in positive:
        if lists and series_labels is not None and _needs_scan(m):
            deferred.append(m)  # maybe cheaper to check on the few series left
            continue
        if m.kind == MATCH_EQUAL:
            p = ix.postings(m.name, m.value)
        else:
            vals = _values_where(ix, m, True)
            if not vals:
                return _empty_like(ix)
            p = _postings_for_values(ix, m.name, vals)
        if len(p) == 0:
            return p[:0]  # a fresh array: p may belong to the index
        lists.append(p)
    base = _pst.intersect_many(lists) if lists else ix.all_postings()
    owned = bool(lists)

    for m in deferred:
        if len(base) == 0:
            break
        values = ix.label_values(m.name)
        if len(base) <= len(values) * SERIES_FILTER_RATIO:
            base = _filter_by_labels(base, m, series_labels)
        else:
            if m._regex is not None and m._regex.prefix:
                values = _values_with_prefix(ix, m.name, m._regex.prefix)
            vals = [v for v in values if m.matches(v)]
            if not vals:
                return _empty_like(ix)
            base = _pst.intersect(base, _postings_for_values(ix, m.name, vals))

    for m in negative:
        if len(base) == 0:
            break
        if m.kind == MATCH_NOT_EQUAL:
            drop = ix.postings(m.name, m.value) if m.value != "" else None
        elif series_labels is not None and _needs_scan(m):
            values = ix.label_values(m.name)
            if len(base) <= len(values) * SERIES_FILTER_RATIO:
                base = _filter_by_labels(base, m, series_labels)
                owned = True
                continue
            vals = [v for v in values if not m.matches(v)]
            drop = _postings_for_values(ix, m.name, vals) if vals else None
        else:
            vals = _values_where(ix, m, False)
            drop = _postings_for_values(ix, m.name, vals) if vals else None
        if drop is not None and len(drop):
            base = _pst.subtract(base, drop)
            owned = True
    if not owned:
        # all_postings() is likely the index's own array: never hand that out to callers
        base = _pst.intersect_many([base])
    return base


# Below this many selected series, reading their label sets beats probing every value.
SERIES_SCAN_LIMIT = 2048


def label_names_for(ix, matchers=()):
    """Sorted label names present on series selected by the matchers (all names if none).
    `ix` also provides label_names() and optionally series_labels(ref) -> dict."""
    if not matchers:
        return list(ix.label_names())
    refs = postings_for_matchers(ix, matchers)
    if len(refs) == 0:
        return []
    series_labels = getattr(ix, "series_labels", None)
    if series_labels is not None and len(refs) <= SERIES_SCAN_LIMIT:
        names = set()
        for ref in refs:
            names.update(series_labels(ref))
        names.discard("")
        return sorted(names)
    out = []
    for name in ix.label_names():
        if name == "":
            continue
        for v in ix.label_values(name):
            if _pst.intersects(refs, ix.postings(name, v)):
                out.append(name)
                break
    return out


def label_values_for(ix, name, matchers=()):
    """Sorted values of label `name` on series selected by the matchers (all values if none).
    Candidate values are first filtered by the matchers on `name` itself."""
    if not matchers:
        return list(ix.label_values(name))
    candidates = ix.label_values(name)
    for m in matchers:
        if m.name == name:
            candidates = [v for v in candidates if m.matches(v)]
    if not candidates:
        return []
    refs = postings_for_matchers(ix, matchers)
    if len(refs) == 0:
        return []
    series_labels = getattr(ix, "series_labels", None)
    if series_labels is not None and len(refs) <= SERIES_SCAN_LIMIT:
        cand = set(candidates)
        found = set()
        for ref in refs:
            v = series_labels(ref).get(name)
            if v is not None and v in cand:
                found.add(v)
        return sorted(found)
    return [v for v in candidates if _pst.intersects(refs, ix.postings(name, v))]
