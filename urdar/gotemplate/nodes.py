"""Parse tree of a Go text/template. str(node) is the text Go shows in "executing ... at <...>"."""
from __future__ import annotations

from typing import Any, List, Optional

from urdar.gostrconv import quote


class Node:
    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos


class TextNode(Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text

    def __str__(self) -> str:
        return quote(self.text)


class ListNode(Node):
    __slots__ = ("nodes",)

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.nodes: List[Node] = []

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


class PipeNode(Node):
    __slots__ = ("line", "decl", "is_assign", "cmds")

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line
        self.decl: List[VariableNode] = []
        self.is_assign = False
        self.cmds: List[CommandNode] = []

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


class ActionNode(Node):
    __slots__ = ("line", "pipe")

    def __init__(self, pos: int, line: int, pipe: PipeNode) -> None:
        super().__init__(pos)
        self.line = line
        self.pipe = pipe

    def __str__(self) -> str:
        return "{{%s}}" % self.pipe


class CommandNode(Node):
    __slots__ = ("args",)

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.args: List[Node] = []

    def __str__(self) -> str:
        return " ".join("(%s)" % a if isinstance(a, PipeNode) else str(a) for a in self.args)


class IdentifierNode(Node):
    __slots__ = ("name",)

    def __init__(self, pos: int, name: str) -> None:
        super().__init__(pos)
        self.name = name

    def __str__(self) -> str:
        return self.name


class VariableNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: List[str]) -> None:
        super().__init__(pos)
        self.idents = idents

    def __str__(self) -> str:
        return ".".join(self.idents)


class DotNode(Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "."


class NilNode(Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "nil"


class FieldNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: List[str]) -> None:
        super().__init__(pos)
        self.idents = idents

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


class ChainNode(Node):
    __slots__ = ("node", "fields")

    def __init__(self, pos: int, node: Node) -> None:
        super().__init__(pos)
        self.node = node
        self.fields: List[str] = []

    def __str__(self) -> str:
        s = "(%s)" % self.node if isinstance(self.node, PipeNode) else str(self.node)
        return s + "".join("." + f for f in self.fields)


class BoolNode(Node):
    __slots__ = ("value",)

    def __init__(self, pos: int, value: bool) -> None:
        super().__init__(pos)
        self.value = value

    def __str__(self) -> str:
        return "true" if self.value else "false"


class NumberNode(Node):
    __slots__ = ("text", "value")

    def __init__(self, pos: int, text: str, value: Any) -> None:
        super().__init__(pos)
        self.text = text
        self.value = value        # int, float, or an overflow error message

    def __str__(self) -> str:
        return self.text


class StringNode(Node):
    __slots__ = ("quoted", "text")

    def __init__(self, pos: int, quoted: str, text: str) -> None:
        super().__init__(pos)
        self.quoted = quoted
        self.text = text

    def __str__(self) -> str:
        return self.quoted


class BranchNode(Node):
    __slots__ = ("line", "pipe", "list", "else_list")
    keyword = ""

    def __init__(self, pos: int, line: int, pipe: PipeNode, list_: ListNode,
                 else_list: Optional[ListNode]) -> None:
        super().__init__(pos)
        self.line = line
        self.pipe = pipe
        self.list = list_
        self.else_list = else_list

    def __str__(self) -> str:
        if self.else_list is not None:
            return "{{%s %s}}%s{{else}}%s{{end}}" % (self.keyword, self.pipe, self.list, self.else_list)
        return "{{%s %s}}%s{{end}}" % (self.keyword, self.pipe, self.list)


class IfNode(BranchNode):
    __slots__ = ()
    keyword = "if"


class RangeNode(BranchNode):
    __slots__ = ()
    keyword = "range"


class WithNode(BranchNode):
    __slots__ = ()
    keyword = "with"


class TemplateNode(Node):
    __slots__ = ("line", "name", "pipe")

    def __init__(self, pos: int, line: int, name: str, pipe: Optional[PipeNode]) -> None:
        super().__init__(pos)
        self.line = line
        self.name = name
        self.pipe = pipe

    def __str__(self) -> str:
        if self.pipe is None:
            return "{{template %s}}" % quote(self.name)
        return "{{template %s %s}}" % (quote(self.name), self.pipe)


class BreakNode(Node):
    __slots__ = ("line",)

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line

    def __str__(self) -> str:
        return "{{break}}"


class ContinueNode(BreakNode):
    __slots__ = ()

    def __str__(self) -> str:
        return "{{continue}}"


class EndNode(Node):
    """{{end}}: only seen by the parser."""
    __slots__ = ()

    def __str__(self) -> str:
        return "{{end}}"


class ElseNode(Node):
    """{{else}}, {{else if}}, {{else with}}: only seen by the parser."""
    __slots__ = ("line", "chain")

    def __init__(self, pos: int, line: int, chain: str) -> None:
        super().__init__(pos)
        self.line = line
        self.chain = chain      # "", "if" or "with"

    def __str__(self) -> str:
        return "{{else}}"


class Tree:
    """One named template: its body and the text it was parsed from (for error positions)."""
    __slots__ = ("name", "parse_name", "root", "text")

    def __init__(self, name: str, parse_name: str, root: ListNode, text: str) -> None:
        self.name = name
        self.parse_name = parse_name
        self.root = root
        self.text = text

    def is_empty(self) -> bool:
        for n in self.root.nodes:
            if isinstance(n, TextNode) and not n.text.strip(" \t\r\n"):
                continue
            return False
        return True

    def location(self, node: Node) -> str:
        """NAME:LINE:COL of a node, the column in bytes as Go counts it."""
        before = self.text[:node.pos]
        nl = before.rfind("\n")
        col = len(before[nl + 1:].encode("utf-8", "surrogateescape")) if nl >= 0 else \
            len(before.encode("utf-8", "surrogateescape"))
        return "%s:%d:%d" % (self.parse_name, before.count("\n") + 1, col)
