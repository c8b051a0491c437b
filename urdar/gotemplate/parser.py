"""Go text/template parser: tokens to trees, with Go's parse error wording."""
from __future__ import annotations

from typing import Callable, Dict, List, NoReturn, Optional, Tuple

from . import lexer as L
from .errors import ParseError
from .nodes import (ActionNode, BoolNode, BranchNode, BreakNode, ChainNode, CommandNode,
                    ContinueNode, DotNode, ElseNode, EndNode, FieldNode, IdentifierNode, IfNode,
                    ListNode, NilNode, Node, NumberNode, PipeNode, RangeNode, StringNode,
                    TemplateNode, TextNode, Tree, VariableNode, WithNode)

MAX_NESTING = 200   # Python's stack is small; Go 1.20+ also caps expression depth (at 10000)


def _hexval(s: str) -> int:
    return int(s, 16)


def unquote(s: str) -> str:
    """strconv.Unquote of a Go "..." or `...` literal; ValueError("invalid syntax") if malformed."""
    if len(s) < 2:
        raise ValueError("invalid syntax")
    q = s[0]
    if q == "`":
        if s[-1] != "`" or "`" in s[1:-1]:
            raise ValueError("invalid syntax")
        return s[1:-1].replace("\r", "")
    if q != '"' or s[-1] != '"':
        raise ValueError("invalid syntax")
    body = s[1:-1]
    if "\\" not in body:
        if '"' in body or "\n" in body:
            raise ValueError("invalid syntax")
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        r, i = _unquote_char(body, i, '"', out)
    return out.decode("utf-8", "surrogateescape")


_SIMPLE = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def _unquote_char(s: str, i: int, q: str, out: bytearray) -> Tuple[int, int]:
    """One (possibly escaped) character of a Go literal at s[i]: appends its bytes, returns (rune, next i)."""
    c = s[i]
    if c == q and q != "`":
        raise ValueError("invalid syntax")
    if c == "\n":
        raise ValueError("invalid syntax")
    if c != "\\":
        out += c.encode("utf-8", "surrogateescape")
        return ord(c), i + 1
    if i + 1 >= len(s):
        raise ValueError("invalid syntax")
    e = s[i + 1]
    i += 2
    if e in _SIMPLE:
        out.append(_SIMPLE[e])
        return _SIMPLE[e], i
    if e == q:
        out += e.encode()
        return ord(e), i
    if e in "xuU":
        n = {"x": 2, "u": 4, "U": 8}[e]
        h = s[i:i + n]
        if len(h) != n or any(ch not in "0123456789abcdefABCDEF" for ch in h):
            raise ValueError("invalid syntax")
        v = _hexval(h)
        i += n
        if e == "x":
            out.append(v)
            return v, i
        if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
            raise ValueError("invalid syntax")
        out += chr(v).encode("utf-8")
        return v, i
    if e in "01234567":
        o = s[i - 1:i + 2]
        if len(o) != 3 or any(ch not in "01234567" for ch in o):
            raise ValueError("invalid syntax")
        v = int(o, 8)
        if v > 255:
            raise ValueError("invalid syntax")
        out.append(v)
        return v, i + 2
    raise ValueError("invalid syntax")


def _parse_int(text: str) -> Optional[int]:
    """strconv.ParseInt(text, 0, 64) accepting Go's prefixes, underscores and leading-0 octal."""
    t = text
    sign = 1
    if t[:1] in "+-":
        sign = -1 if t[0] == "-" else 1
        t = t[1:]
    if not t or t[0] in "+-":
        return None
    base = 10
    body = t
    if len(t) > 1 and t[0] == "0":
        p = t[1].lower()
        if p in "xob":
            base = {"x": 16, "o": 8, "b": 2}[p]
            body = t[2:]
        else:
            base = 8
            body = t[1:]
    underscores = "_" in body
    if underscores:
        # an underscore only between digits or after the base prefix
        pre = t[:len(t) - len(body)]
        full = pre + body
        if full.startswith("_") or full.endswith("_") or "__" in full:
            return None
        if base == 10 and not pre == "":
            return None
        body = body.replace("_", "")
    if not body:
        return None if base != 8 or underscores else 0
    try:
        return sign * int(body, base)
    except ValueError:
        return None


def _parse_float(text: str) -> Optional[float]:
    t = text
    try:
        if "_" in t:
            if t.startswith("_") or t.endswith("_") or "__" in t:
                return None
            t = t.replace("_", "")
        low = t.lower().lstrip("+-")
        if low.startswith("0x"):
            if "p" not in low:
                return None
            neg = t.startswith("-")
            v = float.fromhex(low)
            return -v if neg else v
        if low in ("inf", "infinity", "nan") or "n" in low:
            return None
        return float(t)
    except (ValueError, OverflowError):
        return None


def number_value(text: str) -> object:
    """The value Go's idealConstant gives a number literal: int, float, or an error string."""
    if text.startswith("'"):
        return None      # handled by the caller
    if text.endswith("i"):
        raise ValueError("complex numbers are not supported")
    iv = _parse_int(text)
    if iv is not None:
        is_hex_int = len(text.lstrip("+-")) > 2 and text.lstrip("+-")[1] in "xX" and not any(
            c in text for c in "pP")
        if any(c in text for c in ".eEpP") and not is_hex_int:
            return float(iv)
        if -(1 << 63) <= iv < (1 << 63):
            return iv
        if 0 <= iv < (1 << 64):
            return "%s overflows int" % text
        fv = _parse_float(text)
        if fv is None:
            raise ValueError("illegal number syntax: %s" % _q(text))
        return "%s overflows int" % text if not any(c in text for c in ".eEpP") else fv
    fv = _parse_float(text)
    if fv is None:
        raise ValueError("illegal number syntax: %s" % _q(text))
    if not any(c in text for c in ".eEpP"):
        raise ValueError("illegal number syntax: %s" % _q(text))
    return fv


def _q(s: str) -> str:
    from urdar.gostrconv import quote
    return quote(s)


class _Parser:
    def __init__(self, name: str, text: str, has_func: Callable[[str], bool],
                 trees: Dict[str, Tree]) -> None:
        self.name = name
        self.text = text
        self.toks = L.lex(text)
        self.i = 0
        self.seen = 0
        self.has_func = has_func
        self.trees = trees
        self.vars: List[str] = ["$"]
        self.range_depth = 0
        self.action_line = 0
        self.depth = 0

    # ------------------------------------------------------------ tokens
    def next(self) -> L.Token:
        idx = min(self.i, len(self.toks) - 1)
        self.i = idx + 1
        if idx > self.seen:
            self.seen = idx
        return self.toks[idx]

    def backup(self, n: int = 1) -> None:
        self.i -= n

    def peek(self) -> L.Token:
        return self.toks[min(self.i, len(self.toks) - 1)]

    def next_non_space(self) -> L.Token:
        while True:
            t = self.next()
            if t.typ != L.SPACE:
                return t

    def peek_non_space(self) -> L.Token:
        t = self.next_non_space()
        self.backup()
        return t

    def errorf(self, msg: str) -> NoReturn:
        line = self.toks[min(self.seen, len(self.toks) - 1)].line
        raise ParseError("template: %s:%d: %s" % (self.name, line, msg))

    def unexpected(self, tok: L.Token, context: str) -> NoReturn:
        if tok.typ == L.ERROR:
            extra = ""
            if self.action_line != 0 and self.action_line != tok.line:
                extra = " in action started at %s:%d" % (self.name, self.action_line)
                if tok.val.endswith(" action"):
                    extra = extra[len(" in action"):]
            self.errorf(tok.val + extra)
        self.errorf("unexpected %s in %s" % (tok.describe(), context))

    def expect(self, typ: int, context: str) -> L.Token:
        t = self.next_non_space()
        if t.typ != typ:
            self.unexpected(t, context)
        return t

    def is_kw(self, t: L.Token, word: str) -> bool:
        return t.typ == L.KEYWORD and t.val == word

    # ------------------------------------------------------------ structure
    def parse(self) -> ListNode:
        root = ListNode(0)
        while self.peek().typ != L.EOF:
            if self.peek().typ == L.LDELIM:
                start = self.i
                self.next()
                if self.is_kw(self.next_non_space(), "define"):
                    self.parse_definition()
                    continue
                self.i = start
            n = self.text_or_action()
            if isinstance(n, (EndNode, ElseNode)):
                self.errorf("unexpected %s" % n)
            root.nodes.append(n)
        return root

    def add_tree(self, tree: Tree) -> None:
        old = self.trees.get(tree.name)
        if old is not None and not old.is_empty() and not tree.is_empty():
            self.errorf("template: multiple definition of template %s" % _q(tree.name))
        if old is None or not tree.is_empty():
            self.trees[tree.name] = tree

    def parse_definition(self) -> None:
        context = "define clause"
        t = self.next_non_space()
        if t.typ not in (L.STRING, L.RAWSTRING):
            self.unexpected(t, context)
        name = self.unquote_token(t)
        self.expect(L.RDELIM, context)
        saved = self.vars
        self.vars = ["$"]
        body, end = self.item_list()
        self.vars = saved
        if not isinstance(end, EndNode):
            self.errorf("unexpected %s in %s" % (end, context))
        self.add_tree(Tree(name, self.name, body, self.text))

    def unquote_token(self, t: L.Token) -> str:
        try:
            return unquote(t.val)
        except ValueError as e:
            self.errorf(str(e))

    def item_list(self) -> Tuple[ListNode, Node]:
        lst = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != L.EOF:
            n = self.text_or_action()
            if isinstance(n, (EndNode, ElseNode)):
                return lst, n
            lst.nodes.append(n)
        self.errorf("unexpected EOF")

    def text_or_action(self) -> Node:
        t = self.next_non_space()
        if t.typ == L.TEXT:
            return TextNode(t.pos, t.val)
        if t.typ == L.LDELIM:
            self.action_line = t.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        self.unexpected(t, "input")

    def action(self) -> Node:
        t = self.next_non_space()
        if t.typ == L.KEYWORD:
            w = t.val
            if w == "block":
                return self.block_control()
            if w in ("break", "continue"):
                nt = self.next_non_space()
                if nt.typ != L.RDELIM:
                    self.unexpected(nt, "{{%s}}" % w)
                if self.range_depth == 0:
                    self.errorf("{{%s}} outside {{range}}" % w)
                return BreakNode(t.pos, t.line) if w == "break" else ContinueNode(t.pos, t.line)
            if w == "else":
                p = self.peek_non_space()
                if self.is_kw(p, "if") or self.is_kw(p, "with"):
                    return ElseNode(p.pos, p.line, p.val)
                e = self.expect(L.RDELIM, "else")
                return ElseNode(e.pos, e.line, "")
            if w == "end":
                e = self.expect(L.RDELIM, "end")
                return EndNode(e.pos)
            if w == "if":
                return self.control(IfNode, "if")
            if w == "range":
                return self.control(RangeNode, "range")
            if w == "with":
                return self.control(WithNode, "with")
            if w == "template":
                return self.template_control()
        self.backup()
        p = self.peek()
        return ActionNode(p.pos, p.line, self.pipeline("command", L.RDELIM))

    def control(self, cls: type, context: str) -> BranchNode:
        nvars = len(self.vars)
        try:
            pipe = self.pipeline(context, L.RDELIM)
            if context == "range":
                self.range_depth += 1
            lst, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list: Optional[ListNode] = None
            if isinstance(nxt, ElseNode):
                if nxt.chain and nxt.chain == context and context in ("if", "with"):
                    self.next_non_space()       # the "if"/"with" after else
                    else_list = ListNode(nxt.pos)
                    else_list.nodes.append(self.control(cls, context))
                else:
                    else_list, nxt2 = self.item_list()
                    if not isinstance(nxt2, EndNode):
                        self.errorf("expected end; found %s" % nxt2)
            node: BranchNode = cls(pipe.pos, pipe.line, pipe, lst, else_list)
            return node
        finally:
            del self.vars[nvars:]

    def block_control(self) -> Node:
        context = "block clause"
        t = self.next_non_space()
        if t.typ not in (L.STRING, L.RAWSTRING):
            self.unexpected(t, context)
        name = self.unquote_token(t)
        pipe = self.pipeline(context, L.RDELIM)
        saved, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved, saved_depth
        if not isinstance(end, EndNode):
            self.errorf("unexpected %s in %s" % (end, context))
        self.add_tree(Tree(name, self.name, body, self.text))
        return TemplateNode(t.pos, t.line, name, pipe)

    def template_control(self) -> Node:
        context = "template clause"
        t = self.next_non_space()
        if t.typ not in (L.STRING, L.RAWSTRING):
            self.unexpected(t, context)
        name = self.unquote_token(t)
        pipe = None
        if self.next_non_space().typ != L.RDELIM:
            self.backup()
            pipe = self.pipeline(context, L.RDELIM)
        return TemplateNode(t.pos, t.line, name, pipe)

    # ------------------------------------------------------------ pipelines
    def pipeline(self, context: str, end: int) -> PipeNode:
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.errorf("max expression depth exceeded")
        try:
            return self._pipeline(context, end)
        finally:
            self.depth -= 1

    def _pipeline(self, context: str, end: int) -> PipeNode:
        tok = self.peek_non_space()
        pipe = PipeNode(tok.pos, tok.line)
        while True:
            v = self.peek_non_space()
            if v.typ != L.VARIABLE:
                break
            start = self.i
            self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.typ in (L.ASSIGN, L.DECLARE):
                pipe.is_assign = nxt.typ == L.ASSIGN
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, [v.val]))
                self.vars.append(v.val)
                break
            if nxt.typ == L.CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, [v.val]))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    p = self.peek_non_space()
                    if p.typ in (L.VARIABLE, L.RDELIM, L.RPAREN):
                        continue
                    self.errorf("range can only initialize variables")
                self.errorf("too many declarations in %s" % context)
            self.i = start
            break
        while True:
            t = self.next_non_space()
            if t.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if t.typ in (L.BOOL, L.CHARCONST, L.FIELD, L.IDENT, L.NUMBER, L.RAWSTRING,
                         L.STRING, L.VARIABLE, L.LPAREN) or \
                    (t.typ == L.KEYWORD and t.val in (".", "nil")):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(t, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            self.errorf("missing value for %s" % context)
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                self.errorf("non executable command in pipeline stage %d" % (i + 2))

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            t = self.next()
            if t.typ == L.SPACE:
                continue
            if t.typ in (L.RDELIM, L.RPAREN):
                self.backup()
            elif t.typ == L.PIPE:
                pass
            else:
                self.unexpected(t, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self) -> Optional[Node]:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == L.FIELD:
            chain = ChainNode(self.peek().pos, node)
            while self.peek().typ == L.FIELD:
                chain.fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(chain.pos, node.idents + chain.fields)
            if isinstance(node, VariableNode):
                return VariableNode(chain.pos, node.idents + chain.fields)
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                self.errorf("unexpected . after term %s" % _q(str(node)))
            return chain
        return node

    def term(self) -> Optional[Node]:
        t = self.next_non_space()
        typ = t.typ
        if typ == L.IDENT:
            if not self.has_func(t.val):
                self.errorf("function %s not defined" % _q(t.val))
            return IdentifierNode(t.pos, t.val)
        if typ == L.KEYWORD and t.val == ".":
            return DotNode(t.pos)
        if typ == L.KEYWORD and t.val == "nil":
            return NilNode(t.pos)
        if typ == L.VARIABLE:
            if t.val not in self.vars:
                self.errorf("undefined variable %s" % _q(t.val))
            return VariableNode(t.pos, [t.val])
        if typ == L.FIELD:
            return FieldNode(t.pos, [t.val[1:]])
        if typ == L.BOOL:
            return BoolNode(t.pos, t.val == "true")
        if typ == L.CHARCONST:
            out = bytearray()
            try:
                r, j = _unquote_char(t.val, 1, "'", out)
            except ValueError as e:
                self.errorf(str(e))
            if t.val[j:] != "'":
                self.errorf("malformed character constant: %s" % t.val)
            return NumberNode(t.pos, t.val, r)
        if typ == L.NUMBER:
            try:
                value = number_value(t.val)
            except ValueError as e:
                self.errorf(str(e))
            return NumberNode(t.pos, t.val, value)
        if typ == L.LPAREN:
            return self.pipeline("parenthesized pipeline", L.RPAREN)
        if typ in (L.STRING, L.RAWSTRING):
            return StringNode(t.pos, t.val, self.unquote_token(t))
        self.backup()
        return None


def parse(name: str, text: str, has_func: Callable[[str], bool]) -> Dict[str, Tree]:
    """Parse one template text: the trees it defines, the body itself under `name`."""
    trees: Dict[str, Tree] = {}
    p = _Parser(name, text, has_func, trees)
    try:
        root = p.parse()
    except RecursionError:
        raise ParseError("template: %s: max expression depth exceeded" % name) from None
    p.add_tree(Tree(name, name, root, text))
    return trees
