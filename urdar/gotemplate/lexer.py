"""Go text/template lexer: the template text becomes a list of tokens, ending in EOF or ERROR.

Lexing is eager; an ERROR token carries the message, and the parser reports it only when it gets
there, so an earlier syntax error wins as in Go.
"""
from __future__ import annotations

from typing import List, NamedTuple

TEXT, LDELIM, RDELIM, SPACE, ASSIGN, DECLARE, PIPE, CHAR, CHARCONST, NUMBER, STRING, RAWSTRING, \
    VARIABLE, FIELD, IDENT, BOOL, LPAREN, RPAREN, EOF, ERROR, KEYWORD = range(21)

KEYWORDS = frozenset(("block", "break", "continue", "define", "else", "end", "if", "range",
                      "template", "with", "nil", "."))

SPACE_CHARS = " \t\r\n"
_TERMINATORS = frozenset(SPACE_CHARS) | frozenset(".,|:)(")


class Token(NamedTuple):
    typ: int
    val: str
    pos: int
    line: int

    def describe(self) -> str:
        """How Go's parser names a token in 'unexpected X in Y' messages."""
        if self.typ == EOF:
            return "EOF"
        if self.typ == ERROR:
            return self.val
        if self.typ == KEYWORD:
            return "<%s>" % self.val
        from urdar.gostrconv import quote
        if len(self.val) > 10:
            return quote(self.val[:10]) + "..."
        return quote(self.val)


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdigit()


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.start = 0
        self.toks: List[Token] = []
        self.paren = 0
        self._line_pos = 0
        self._line = 1

    def line_at(self, pos: int) -> int:
        # tokens come in order, so count newlines from the previous token on (linear overall)
        if pos < self._line_pos:
            self._line_pos, self._line = 0, 1
        self._line += self.text.count("\n", self._line_pos, pos)
        self._line_pos = pos
        return self._line

    def emit(self, typ: int) -> None:
        self.toks.append(Token(typ, self.text[self.start:self.pos], self.start, self.line_at(self.start)))
        self.start = self.pos

    def error(self, msg: str) -> None:
        self.toks.append(Token(ERROR, msg, self.start, self.line_at(self.start)))

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_right_delim(self) -> tuple[bool, bool]:
        t, p = self.text, self.pos
        if len(t) >= p + 2 and t[p] in SPACE_CHARS and t[p + 1] == "-" and t.startswith("}}", p + 2):
            return True, True
        if t.startswith("}}", p):
            return True, False
        return False, False

    def at_terminator(self) -> bool:
        c = self.peek()
        return c == "" or c in _TERMINATORS or self.text.startswith("}}", self.pos)

    def run(self) -> List[Token]:
        t = self.text
        while True:
            x = t.find("{{", self.pos)
            if x < 0:
                self.pos = len(t)
                if self.pos > self.start:
                    self.emit(TEXT)
                self.emit(EOF)
                return self.toks
            self.pos = x
            trim = len(t) >= x + 4 and t[x + 2] == "-" and t[x + 3] in SPACE_CHARS
            end_text = x
            if trim:
                end_text = len(t[self.start:x].rstrip(SPACE_CHARS)) + self.start
            if end_text > self.start:
                self.pos = end_text
                self.emit(TEXT)
            self.start = self.pos = x
            if not self.left_delim(trim):
                return self.toks

    def left_delim(self, trim: bool) -> bool:
        t = self.text
        self.pos += 2
        after = 2 if trim else 0
        if t.startswith("/*", self.pos + after):
            self.pos += after
            self.start = self.pos
            i = t.find("*/", self.pos + 2)
            if i < 0:
                self.error("unclosed comment")
                return False
            self.pos = i + 2
            delim, trim_right = self.at_right_delim()
            if not delim:
                self.error("comment ends before closing delimiter")
                return False
            self.pos += 4 if trim_right else 2
            if trim_right:
                self.pos = _skip_space(t, self.pos)
            self.start = self.pos
            return True
        self.emit(LDELIM)
        self.pos += after
        self.start = self.pos
        self.paren = 0
        return self.inside_action()

    def inside_action(self) -> bool:
        t = self.text
        n = len(t)
        while True:
            delim, trim_right = self.at_right_delim()
            if delim:
                if self.paren != 0:
                    self.error("unclosed left paren")
                    return False
                if trim_right:
                    self.pos += 2
                    self.start = self.pos
                self.pos += 2
                self.emit(RDELIM)
                if trim_right:
                    self.pos = _skip_space(t, self.pos)
                    self.start = self.pos
                return True
            if self.pos >= n:
                self.error("unclosed action")
                return False
            c = t[self.pos]
            self.pos += 1
            if c in SPACE_CHARS:
                self.pos -= 1
                k = self.pos
                while self.pos < n and t[self.pos] in SPACE_CHARS:
                    self.pos += 1
                # " -}}": the last space belongs to the trim marker
                p = self.pos - 1
                if t.startswith("-}}", self.pos):
                    self.pos = p
                    if self.pos == k:
                        continue
                self.emit(SPACE)
            elif c == "=":
                self.emit(ASSIGN)
            elif c == ":":
                if self.peek() != "=":
                    self.error("expected :=")
                    return False
                self.pos += 1
                self.emit(DECLARE)
            elif c == "|":
                self.emit(PIPE)
            elif c == '"':
                if not self.quoted('"', "unterminated quoted string"):
                    return False
                self.emit(STRING)
            elif c == "`":
                i = t.find("`", self.pos)
                if i < 0:
                    self.error("unterminated raw quoted string")
                    return False
                self.pos = i + 1
                self.emit(RAWSTRING)
            elif c == "$":
                if not self.field_or_variable(VARIABLE):
                    return False
            elif c == "'":
                if not self.quoted("'", "unterminated character constant"):
                    return False
                self.emit(CHARCONST)
            elif c == "." and not (self.pos < n and "0" <= t[self.pos] <= "9"):
                if not self.field_or_variable(FIELD):
                    return False
            elif c in "+-." or "0" <= c <= "9":
                self.pos -= 1
                if not self.number():
                    return False
            elif _is_alnum(c):
                while self.pos < n and _is_alnum(t[self.pos]):
                    self.pos += 1
                if not self.at_terminator():
                    self.bad_char()
                    return False
                word = t[self.start:self.pos]
                if word in KEYWORDS:
                    self.emit(KEYWORD)
                elif word in ("true", "false"):
                    self.emit(BOOL)
                else:
                    self.emit(IDENT)
            elif c == "(":
                self.emit(LPAREN)
                self.paren += 1
            elif c == ")":
                self.emit(RPAREN)
                self.paren -= 1
                if self.paren < 0:
                    self.error("unexpected right paren U+0029 ')'")
                    return False
            elif c < "\x7f" and c.isprintable():
                self.emit(CHAR)
            else:
                self.error("unrecognized character in action: %s" % _unicode_repr(c))
                return False

    def bad_char(self) -> None:
        self.error("bad character %s" % _unicode_repr(self.peek()))

    def quoted(self, q: str, msg: str) -> bool:
        t = self.text
        n = len(t)
        while True:
            if self.pos >= n:
                self.error(msg)
                return False
            c = t[self.pos]
            self.pos += 1
            if c == "\\":
                if self.pos >= n or t[self.pos] == "\n":
                    self.error(msg)
                    return False
                self.pos += 1
            elif c == "\n":
                self.error(msg)
                return False
            elif c == q:
                return True

    def field_or_variable(self, typ: int) -> bool:
        t = self.text
        if self.at_terminator():
            if typ == VARIABLE:
                self.emit(VARIABLE)
            else:
                self.emit(KEYWORD)      # "." alone is dot
            return True
        while self.pos < len(t) and _is_alnum(t[self.pos]):
            self.pos += 1
        if not self.at_terminator():
            self.bad_char()
            return False
        self.emit(typ)
        return True

    def accept(self, chars: str) -> bool:
        if self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
            return True
        return False

    def accept_run(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
            return False
        return True

    def number(self) -> bool:
        from urdar.gostrconv import quote
        if not self.scan_number():
            self.error("bad number syntax: %s" % quote(self.text[self.start:self.pos]))
            return False
        if self.peek() in ("+", "-"):
            if not self.scan_number() or self.text[self.pos - 1] != "i":
                self.error("bad number syntax: %s" % quote(self.text[self.start:self.pos]))
                return False
        self.emit(NUMBER)
        return True


def _skip_space(t: str, pos: int) -> int:
    n = len(t)
    while pos < n and t[pos] in SPACE_CHARS:
        pos += 1
    return pos


def _unicode_repr(c: str) -> str:
    """Go's %#U: U+0040 '@'."""
    if c == "":
        return "U+FFFFFFFF"         # Go's eof rune (-1) printed with %#U
    o = ord(c)
    s = "U+%04X" % o
    if c.isprintable():
        s += " '" + c + "'"
    return s


def lex(text: str) -> List[Token]:
    return _Lexer(text).run()
