"""Prometheus' PromQL prettifier (parser.Prettify, promql/parser/prettier.go): a node whose
String() is at most 100 bytes stays on one line (indented two spaces per level); a longer one is
split — an aggregation or call puts each argument on its own line inside its parentheses, a
binary expression puts its operands on their own lines around the operator line, a parenthesis
its content, a subquery splits its inner expression and keeps its [range:step] suffix; a unary
minus prefixes its operand's first line. Prometheus' own quirks are kept: a subquery short enough
for one line is not indented, and long binary chains deepen their indentation by one level per
term. Binary chains (a + b + ... nest to the left) are walked in a loop, not recursively, and the
output size is bounded (PrettyTooLarge)."""
from urdar.promql import ast as A

MAX_LINE = 100              # prettier.go's maxCharactersPerLine (bytes of String())
INDENT = "  "
# A chain of n terms indents its lines by up to n levels, so the output grows with n squared;
# past this many characters the query is refused rather than built.
MAX_OUTPUT_CHARS = 16 << 20


class PrettyTooLarge(ValueError):
    pass


def _blen(s):
    return len(s.encode("utf-8", "surrogatepass"))


class _Printer:
    def __init__(self, limit):
        self.limit = limit
        self.size = 0

    def emit(self, s):
        self.size += len(s)
        if self.size > self.limit:
            raise PrettyTooLarge("the formatted query would be larger than %d characters"
                                 % self.limit)
        return s

    def pretty(self, n, level):
        ind = INDENT * level
        if isinstance(n, A.BinaryExpr):
            return self.binary(n, level)
        if isinstance(n, A.SubqueryExpr):
            text = str(n)
            if _blen(text) <= MAX_LINE:
                return self.emit(text)          # (sic) no indent, as Prometheus
            return self.pretty(n.expr, level) + self.emit(n.suffix())
        if isinstance(n, A.UnaryExpr):
            return self.emit(ind + n.op) + self.pretty(n.expr, level).strip()
        text = str(n)
        if _blen(text) <= MAX_LINE or not isinstance(n, (A.AggregateExpr, A.Call, A.ParenExpr)):
            return self.emit(ind + text)
        if isinstance(n, A.AggregateExpr):
            head = self.emit(ind + n.op_str() + "(\n")
            param = ""
            if n.op in A.AGGREGATORS_WITH_PARAM and n.param is not None:
                param = self.pretty(n.param, level + 1) + self.emit(",\n")
            return head + param + self.pretty(n.expr, level + 1) + self.emit("\n" + ind + ")")
        if isinstance(n, A.Call):
            args = ",\n".join(self.pretty(a, level + 1) for a in n.args)
            return self.emit(ind + n.func.name + "(\n") + args + self.emit("\n" + ind + ")")
        return (self.emit(ind + "(\n") + self.pretty(n.expr, level + 1)
                + self.emit("\n" + ind + ")"))

    def binary(self, n, level):
        """A chain b0 = (b1 op0 r0), b1 = (b2 op1 r1), ...: b_i sits at level + i; the first
        b_i short enough for one line (or the innermost left operand) opens the text, then
        each split b_i, inner to outer, adds its operator line and right operand."""
        spine = n.left_spine()
        # Byte lengths of every spine element's String(), built from the inside out.
        lengths = [0] * len(spine)
        inner = _blen(str(spine[-1].lhs))
        for i in range(len(spine) - 1, -1, -1):
            b = spine[i]
            inner += _blen(" %s%s%s " % (b.op, " bool" if b.return_bool else "",
                                         b.matching_str())) + _blen(str(b.rhs))
            lengths[i] = inner
        split = 0
        while split < len(spine) and lengths[split] > MAX_LINE:
            split += 1
        if split < len(spine):
            out = [self.emit(INDENT * (level + split) + str(spine[split]))]
        else:
            out = [self.pretty(spine[-1].lhs, level + split)]
        for i in range(split - 1, -1, -1):
            b = spine[i]
            out.append(self.emit("\n%s%s%s%s\n" % (INDENT * (level + i), b.op,
                                                   " bool" if b.return_bool else "",
                                                   b.matching_str())))
            out.append(self.pretty(b.rhs, level + i + 1))
        return "".join(out)


def prettify(node, max_chars=MAX_OUTPUT_CHARS):
    """The query as Prometheus' format_query renders it."""
    return _Printer(max_chars).pretty(node, 0)
