"""A dict-based postings index for tests: the interface matchers.postings_for_matchers,
label_names_for and label_values_for expect from the head and block readers, plus a
brute-force `select` oracle that evaluates matchers series by series."""
from array import array


class MemIndex:
    """Series given as label dicts; refs are assigned in label-set order starting at
    `first_ref` (blocks number series that way), stored as array(typecode)."""

    def __init__(self, series, typecode="Q", first_ref=1, with_series_labels=True, with_typecode=False):
        self.typecode = typecode
        ordered = sorted({tuple(sorted((n, v) for n, v in s.items() if v)) for s in series})
        self._labels = {}
        self._postings = {}
        for i, pairs in enumerate(ordered):
            ref = first_ref + i * 3  # gaps, so refs are not positions
            self._labels[ref] = dict(pairs)
            for n, v in pairs:
                self._postings.setdefault(n, {}).setdefault(v, []).append(ref)
        self._all = array(typecode, sorted(self._labels))
        if with_series_labels:
            self.series_labels = lambda ref: dict(self._labels[ref])
        if with_typecode:
            self.postings_typecode = typecode
        self.calls = []

    def label_names(self):
        return sorted(self._postings)

    def label_values(self, name):
        self.calls.append(("label_values", name))
        return sorted(self._postings.get(name, {}))

    def postings(self, name, value):
        self.calls.append(("postings", name, value))
        return array(self.typecode, self._postings.get(name, {}).get(value, []))

    def all_postings(self):
        self.calls.append(("all_postings",))
        return self._all

    # ---- oracle -------------------------------------------------------------------

    def select(self, matchers):
        """Refs whose labels satisfy every matcher, checked one series at a time."""
        return [ref for ref, labels in sorted(self._labels.items())
                if all(m.matches(labels.get(m.name, "")) for m in matchers)]

    def names_of(self, refs):
        return sorted({n for r in refs for n in self._labels[r]})

    def values_of(self, refs, name):
        return sorted({self._labels[r][name] for r in refs if name in self._labels[r]})
