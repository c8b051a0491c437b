"""PromQL lexer: query text -> tokens with character positions.

Follows Prometheus 3.x lexing rules (promql/parser/lex.go): keywords are case-insensitive,
label names inside braces are never keywords, `[`..`]` switches to duration-expression
lexing, numbers include hex, `Inf`/`NaN`, exponents and underscores, durations are compound
(`1h30m`). A lexing error becomes an ERROR token carrying Prometheus' message; the parser
reports it. Comments (`# ...`) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from urdar.gostrconv import quote as go_quote, quote_rune

# Token kinds. Keywords use their own kind names below.
EOF = "EOF"
ERROR = "ERROR"
IDENTIFIER = "IDENTIFIER"
METRIC_IDENTIFIER = "METRIC_IDENTIFIER"
NUMBER = "NUMBER"
DURATION = "DURATION"
STRING = "STRING"
LEFT_PAREN = "("
RIGHT_PAREN = ")"
LEFT_BRACE = "{"
RIGHT_BRACE = "}"
LEFT_BRACKET = "["
RIGHT_BRACKET = "]"
COMMA = ","
COLON = ":"
EQL = "="
AT = "@"
# Operators (kind == operator text).
OPERATORS = ("+", "-", "*", "/", "%", "^", "==", "!=", "<", "<=", ">", ">=", "=~", "!~",
             "</", ">/", "@", "and", "or", "unless", "atan2")
AGGREGATOR_WORDS = ("sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk",
                    "bottomk", "count_values", "quantile", "limitk", "limit_ratio")
KEYWORD_WORDS = ("offset", "smoothed", "anchored", "by", "without", "on", "ignoring",
                 "group_left", "group_right", "fill", "fill_left", "fill_right", "bool")
PREPROCESSOR_WORDS = ("start", "end", "step", "range", "max_of", "min_of")

# word (lower-case) -> token kind; the kind of a keyword is the lower-case word itself.
_WORDS = {}
for _w in ("and", "or", "unless", "atan2") + AGGREGATOR_WORDS + KEYWORD_WORDS + PREPROCESSOR_WORDS:
    _WORDS[_w] = _w
_WORDS["inf"] = NUMBER
_WORDS["nan"] = NUMBER

_DURATION_KEYWORDS = ("step", "range", "max_of", "min_of")

# Kinds whose printed form is fixed (Prometheus' ItemTypeStr): shown without a kind prefix.
_PUNCT = frozenset((LEFT_PAREN, RIGHT_PAREN, LEFT_BRACE, RIGHT_BRACE, LEFT_BRACKET,
                    RIGHT_BRACKET, COMMA, COLON, EQL))


@dataclass
class Token:
    kind: str
    pos: int  # character offset of the first character
    val: str

    @property
    def end(self) -> int:
        return self.pos + len(self.val)

    def __str__(self) -> str:
        k = self.kind
        if k == EOF:
            return "EOF"
        if k == ERROR:
            return self.val
        if k in (IDENTIFIER, METRIC_IDENTIFIER):
            return go_quote(self.val)
        if k in KEYWORD_WORDS:
            return "<%s>" % self.val
        if k in OPERATORS:
            return "<op:%s>" % self.val
        if k in AGGREGATOR_WORDS:
            return "<aggr:%s>" % self.val
        if len(self.val) > 10:
            return _trunc_quote(self.val)
        return go_quote(self.val)

    def desc(self) -> str:
        """How Prometheus names this token in `unexpected ...` messages."""
        k = self.kind
        if k in _PUNCT or k in OPERATORS or k in _WORDS and k != NUMBER:
            return str(self)
        if k == EOF:
            return "end of input"
        names = {ERROR: "error", IDENTIFIER: "identifier", METRIC_IDENTIFIER: "metric identifier",
                 STRING: "string", NUMBER: "number", DURATION: "duration"}
        return "%s %s" % (names.get(k, k), self)


def _trunc_quote(s: str) -> str:
    # Go's %.10q quotes the first ten runes, then "..." follows.
    return go_quote(s[:10]) + "..."


def _is_space(c: str) -> bool:
    return c in " \t\n\r"


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9" if c else False


def _is_alpha(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") if c else False


def _is_alnum(c: str) -> bool:
    return _is_alpha(c) or _is_digit(c)


class Lexer:
    """Produces tokens on demand (`next_token()`), so an error far to the right is only found
    once the parser gets there, as in Prometheus."""

    def __init__(self, text: str):
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.paren_depth = 0
        self.brace_open = False
        self.bracket_open = False
        self.got_colon = False
        self.got_duration = False
        self.in_duration_expr = False  # just after '[' or inside a duration expression
        self.done = False

    # -- helpers ---------------------------------------------------------------------------
    def _peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.text[i] if i < self.n else ""

    def _tok(self, kind: str, start: int) -> Token:
        return Token(kind, start, self.text[start:self.pos])

    def _err(self, start: int, msg: str) -> Token:
        self.done = True
        return Token(ERROR, start, msg)

    def _skip_space(self):
        while self.pos < self.n and _is_space(self.text[self.pos]):
            self.pos += 1

    # -- main entry --------------------------------------------------------------------------
    def next_token(self) -> Token:
        """The next non-comment token; EOF forever at the end; ERROR once on a lexing error."""
        while True:
            if self.done:
                return Token(EOF, self.n, "")
            t = self._next()
            if t is None:
                continue
            if t.kind == "COMMENT":
                continue
            if t.kind == EOF:
                self.done = True
            return t

    def _next(self):
        if self.brace_open:
            return self._inside_braces()
        if self.in_duration_expr:
            return self._duration_expr()
        if self.text.startswith("#", self.pos):
            return self._comment()
        start = self.pos
        if self.pos >= self.n:
            if self.paren_depth != 0:
                return self._err(start, "unclosed left parenthesis")
            if self.bracket_open:
                return self._err(start, "unclosed left bracket")
            return Token(EOF, self.n, "")
        c = self.text[self.pos]
        self.pos += 1
        if c == ",":
            return self._tok(COMMA, start)
        if _is_space(c):
            self._skip_space()
            return None
        if c in "*/%+-^":
            return self._tok(c, start)
        if c == "=":
            nc = self._peek()
            if nc == "=":
                self.pos += 1
                return self._tok("==", start)
            if nc == "~":
                return self._err(start, "unexpected character after '=': %s" % _rune_q(nc))
            return self._tok(EQL, start)
        if c == "!":
            nc = self._peek()
            self.pos += 1 if nc else 0
            if nc != "=":
                return self._err(start, "unexpected character after '!': %s" % _rune_q(nc))
            return self._tok("!=", start)
        if c in "<>":
            nc = self._peek()
            if nc == "=":
                self.pos += 1
                return self._tok(c + "=", start)
            if nc == "/":
                self.pos += 1
                return self._tok(c + "/", start)
            return self._tok(c, start)
        if _is_digit(c) or (c == "." and _is_digit(self._peek())):
            self.pos = start
            return self._number_or_duration(start)
        if c in "\"'":
            return self._string(start, c)
        if c == "`":
            return self._raw_string(start)
        if _is_alpha(c) or c == ":":
            if not self.bracket_open:
                self.pos = start
                return self._keyword_or_identifier(start)
            if c == ":":
                if self.got_colon:
                    return self._err(start, "unexpected colon %s" % _rune_q(c))
                self.got_colon = True
                return self._tok(COLON, start)
            if c.lower() in "srm":
                t = self._duration_keyword(start)
                if t is not None:
                    return t
            return self._err(start, "unexpected character: %s, expected %s" % (_rune_q(c), "':'"))
        if c == "(":
            self.paren_depth += 1
            return self._tok(LEFT_PAREN, start)
        if c == ")":
            t = self._tok(RIGHT_PAREN, start)
            self.paren_depth -= 1
            if self.paren_depth < 0:
                return self._err(start + 1, "unexpected right parenthesis %s" % _rune_q(c))
            return t
        if c == "{":
            self.brace_open = True
            return self._tok(LEFT_BRACE, start)
        if c == "[":
            if self.bracket_open:
                return self._err(start, "unexpected left bracket %s" % _rune_q(c))
            self.got_colon = False
            t = self._tok(LEFT_BRACKET, start)
            self._skip_space()
            self.bracket_open = True
            self.in_duration_expr = True
            return t
        if c == "]":
            if not self.bracket_open:
                return self._err(start, "unexpected right bracket %s" % _rune_q(c))
            self.bracket_open = False
            return self._tok(RIGHT_BRACKET, start)
        if c == "@":
            return self._tok(AT, start)
        return self._err(start, "unexpected character: %s" % _rune_q(c))

    def _comment(self):
        start = self.pos
        while self.pos < self.n and self.text[self.pos] not in "\r\n":
            self.pos += 1
        return Token("COMMENT", start, self.text[start:self.pos])

    def _inside_braces(self):
        if self.text.startswith("#", self.pos):
            return self._comment()
        start = self.pos
        if self.pos >= self.n:
            return self._err(start, "unexpected end of input inside braces")
        c = self.text[self.pos]
        self.pos += 1
        if _is_space(c):
            self._skip_space()
            return None
        if _is_alpha(c):
            while self.pos < self.n and _is_alnum(self.text[self.pos]):
                self.pos += 1
            return self._tok(IDENTIFIER, start)
        if c == ",":
            return self._tok(COMMA, start)
        if c in "\"'":
            return self._string(start, c)
        if c == "`":
            return self._raw_string(start)
        if c == "=":
            if self._peek() == "~":
                self.pos += 1
                return self._tok("=~", start)
            return self._tok(EQL, start)
        if c == "!":
            nc = self._peek()
            self.pos += 1 if nc else 0
            if nc == "~":
                return self._tok("!~", start)
            if nc == "=":
                return self._tok("!=", start)
            return self._err(start, "unexpected character after '!' inside braces: %s"
                             % _rune_q(nc))
        if c == "{":
            return self._err(start, "unexpected left brace %s" % _rune_q(c))
        if c == "}":
            self.brace_open = False
            return self._tok(RIGHT_BRACE, start)
        return self._err(start, "unexpected character inside braces: %s" % _rune_q(c))

    def _duration_expr(self):
        start = self.pos
        if self.pos >= self.n:
            return self._err(start, "unexpected end of input in duration expression")
        c = self.text[self.pos]
        self.pos += 1
        if c == "]":
            self.bracket_open = False
            self.got_colon = False
            self.in_duration_expr = False
            return self._tok(RIGHT_BRACKET, start)
        if c == ":":
            t = self._tok(COLON, start)
            if not self.got_duration:
                return self._err(start + 1, "unexpected colon before duration in duration expression")
            if self.got_colon:
                return self._err(start + 1, "unexpected repeated colon in duration expression")
            self.got_colon = True
            return t
        if c == "(":
            self.paren_depth += 1
            return self._tok(LEFT_PAREN, start)
        if c == ")":
            self.paren_depth -= 1
            if self.paren_depth < 0:
                return self._err(start + 1, "unexpected right parenthesis %s" % _rune_q(c))
            return self._tok(RIGHT_PAREN, start)
        if _is_space(c):
            self._skip_space()
            return None
        if c in "+-*/%^,":
            return self._tok(c if c != "," else COMMA, start)
        if c.lower() in "srm" and _is_alpha(c):
            t = self._duration_keyword(start)
            if t is not None:
                return t
            return self._err(start, "unexpected character in duration expression: %s" % _rune_q(c))
        if _is_digit(c) or (c == "." and _is_digit(self._peek())):
            self.pos = start
            self.got_duration = True
            self.in_duration_expr = False  # continue in statement mode with bracket_open
            return self._number_or_duration(start)
        return self._err(start, "unexpected character in duration expression: %s" % _rune_q(c))

    def _duration_keyword(self, start):
        while self.pos < self.n and _is_alpha(self.text[self.pos]):
            self.pos += 1
        word = self.text[start:self.pos].lower()
        if word in _DURATION_KEYWORDS:
            return self._tok(word, start)
        return None

    def _keyword_or_identifier(self, start):
        while self.pos < self.n and (_is_alnum(self.text[self.pos]) or self.text[self.pos] == ":"):
            self.pos += 1
        word = self.text[start:self.pos]
        kind = _WORDS.get(word.lower())
        if kind is not None:
            if kind in ("fill", "fill_left", "fill_right"):
                # Only a keyword when a '(' follows (after optional spaces).
                i = self.pos
                while i < self.n and _is_space(self.text[i]):
                    i += 1
                if i >= self.n or self.text[i] != "(":
                    return self._tok(IDENTIFIER, start)
            return self._tok(kind, start)
        if ":" in word:
            return self._tok(METRIC_IDENTIFIER, start)
        return self._tok(IDENTIFIER, start)

    # -- numbers -------------------------------------------------------------------------------
    def _scan_number(self) -> bool:
        """Advance over a number; False if malformed (position left where it failed)."""
        text, n = self.text, self.n
        initial = self.pos
        digits = "0123456789"
        if self._peek() == "0" and self._peek(1) in ("x", "X") and self._peek(1):
            self.pos += 2
            if self._peek() == "_":
                self.pos += 1
            digits = "0123456789abcdefABCDEF"
        elif self._peek() == "0":
            pass

        def accept(valid):
            if self.pos < n and text[self.pos] in valid:
                self.pos += 1
                return True
            return False

        def peek_in(valid):
            return self.pos < n and text[self.pos] in valid

        accept(".")
        accept(digits)
        dot = exp = False
        while peek_in(digits + "._eE"):
            if peek_in(".") and dot:
                accept(".")
                return False
            if peek_in("eE") and exp:
                accept("eE")
                return False
            if accept("."):
                dot = True
                if accept("_."):
                    return False
                if len(digits) > 10:
                    return False
                continue
            if accept("eE"):
                exp = True
                accept("+-")
                if accept("._eE") or self.pos >= n:
                    return False
                continue
            if accept("_"):
                if accept("._eE") or self.pos >= n:
                    return False
                continue
            while accept(digits):
                pass
        if self.pos == initial:
            return False
        nxt = self._peek()
        return not _is_alnum(nxt)

    def _number_or_duration(self, start):
        if self._scan_number():
            return self._tok(NUMBER, start)
        # Not a plain number: maybe a duration such as 5m or 1h30m.
        if self._accept_duration_rest():
            self.pos -= 1  # the non-alphanumeric that ended it
            return self._tok(DURATION, start)
        return self._err(start, "bad number or duration syntax: %s"
                         % go_quote(self.text[start:self.pos]))

    def _accept_duration_rest(self) -> bool:
        text, n = self.text, self.n

        def accept(valid):
            if self.pos < n and text[self.pos] in valid:
                self.pos += 1
                return True
            if self.pos >= n:
                self._overrun = True
            return False

        # The number scan stopped on the unit letter; it must be a unit.
        if not accept("smhdwy"):
            return False
        accept("s")
        while accept("0123456789"):
            while accept("0123456789"):
                pass
            if not accept("smhdw"):
                return False
            accept("s")
        # Next must not be alphanumeric; consume one rune like Go's next() does.
        if self.pos < n:
            c = text[self.pos]
            self.pos += 1
            return not _is_alnum(c)
        self.pos += 1  # Go's next() at EOF does not move; we compensate in the caller
        return True

    # -- strings -----------------------------------------------------------------------------
    def _string(self, start, quote):
        text, n = self.text, self.n
        while True:
            if self.pos >= n:
                return self._err(start, "unterminated quoted string")
            c = text[self.pos]
            self.pos += 1
            if c == "\\":
                err = self._escape(quote)
                if err:
                    return self._err(start, err)
                continue
            if "\udc80" <= c <= "\udcff":
                return self._err(start, "invalid UTF-8 rune")
            if c == "\n":
                return self._err(start, "unterminated quoted string")
            if c == quote:
                break
        return self._tok(STRING, start)

    def _escape(self, quote):
        text, n = self.text, self.n
        if self.pos >= n:
            return "escape sequence not terminated"
        c = text[self.pos]
        self.pos += 1
        if c in "abfnrtv\\" or c == quote:
            return None
        if c in "01234567":
            cnt, base, maxv = 3, 8, 255
        elif c == "x":
            cnt, base, maxv = 2, 16, 255
            c = text[self.pos] if self.pos < n else ""
            self.pos += 1 if c else 0
        elif c in "uU":
            cnt, base, maxv = (4 if c == "u" else 8), 16, 0x10FFFF
            c = text[self.pos] if self.pos < n else ""
            self.pos += 1 if c else 0
        else:
            return "unknown escape sequence %s" % _rune_u(c)
        x = 0
        while cnt > 0:
            d = int(c, 16) if c and c in "0123456789abcdefABCDEF" else 16
            if d >= base:
                if not c:
                    return "escape sequence not terminated"
                return "illegal character %s in escape sequence" % _rune_u(c)
            x = x * base + d
            cnt -= 1
            if cnt > 0:
                c = text[self.pos] if self.pos < n else ""
                self.pos += 1 if c else 0
        if x > maxv or 0xD800 <= x < 0xE000:
            return "escape sequence is an invalid Unicode code point"
        return None

    def _raw_string(self, start):
        text, n = self.text, self.n
        while True:
            if self.pos >= n:
                return self._err(start, "unterminated raw string")
            c = text[self.pos]
            self.pos += 1
            if "\udc80" <= c <= "\udcff":
                return self._err(start, "invalid UTF-8 rune")
            if c == "`":
                break
        return self._tok(STRING, start)


def _rune_q(c: str) -> str:
    """Go's %q of a rune: 'x' (or -1-like text for end of input)."""
    return "%!q(int32=-1)" if c == "" else quote_rune(ord(c))


def _rune_u(c: str) -> str:
    """Go's %#U of a rune: U+0063 'c'."""
    if c == "":
        return "U+FFFFFFFFFFFFFFFF"
    o = ord(c)
    if c.isprintable():
        return "U+%04X '%s'" % (o, c)
    return "U+%04X" % o


def tokenize(text: str):
    """All tokens of `text` up to and including EOF or the first ERROR (for tests)."""
    lx = Lexer(text)
    out = []
    while True:
        t = lx.next_token()
        out.append(t)
        if t.kind in (EOF, ERROR):
            return out
