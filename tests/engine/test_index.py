"""Block index files (format v2): layout, label order, round trips and corruption."""
import functools
import os
import shutil
import struct
import tempfile
import unittest

from hypothesis import given, settings, strategies as st

from urdar.engine import encoding
from urdar.engine.errors import CorruptionError
from urdar.engine.index import (
    IndexReader, IndexWriter, compare_label_keys, sort_label_keys, write_index)
from urdar.engine.labels import decode_labels, encode_labels


def K(**labels):
    return encode_labels(labels.items())


def prom_compare(a, b):
    """Oracle for Prometheus labels.Compare on decoded label lists (bytewise strings)."""
    for (an, av), (bn, bv) in zip(a, b):
        an, av, bn, bv = an.encode(), av.encode(), bn.encode(), bv.encode()
        if an != bn:
            return -1 if an < bn else 1
        if av != bv:
            return -1 if av < bv else 1
    return (len(a) > len(b)) - (len(a) < len(b))


def uvarint(b, i):
    x = s = 0
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return x, i


class _Tmp(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-index-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "index")

    def open(self, **kw):
        r = IndexReader(self.path, **kw)
        self.addCleanup(r.close)
        return r


SAMPLE = [
    (K(__name__="up", job="b", instance="x:1"), [(1000, 2000, 8), (2001, 3000, 40)]),
    (K(__name__="up", job="a", instance="x:1"), [(0, 10, 80)]),
    (K(a="1"), []),
    (K(a="1", b="2"), [(5, 5, 100)]),
    (K(ab="0"), [(-50, -1, 120)]),
]


class LabelOrderTests(unittest.TestCase):
    def test_prefix_label_set_sorts_first(self):
        """{a="1"} sorts before {a="1",b="2"}, as in Prometheus."""
        self.assertEqual(compare_label_keys(K(a="1"), K(a="1", b="2")), -1)
        self.assertEqual(compare_label_keys(K(a="1", b="2"), K(a="1")), 1)
        self.assertEqual(compare_label_keys(K(a="1"), K(a="1")), 0)

    def test_name_prefix_compares_by_name_not_key_bytes(self):
        """Name "a" sorts before name "ab" even though the length-prefixed key bytes say otherwise."""
        a, ab = K(a="1", b="2"), K(ab="0")
        self.assertGreater(a, ab)                   # raw key bytes start with the label count
        self.assertEqual(compare_label_keys(a, ab), -1)
        self.assertEqual(compare_label_keys(K(a="zzz"), ab), -1)
        self.assertEqual(compare_label_keys(K(a="1", c="1"), K(a="1", b="9")), 1)
        self.assertEqual(compare_label_keys(K(a="12"), K(a="2")), -1)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.dictionaries(st.sampled_from(["a", "ab", "b", "__name__", "é"]),
                                    st.text(min_size=1, max_size=3), max_size=4), max_size=30))
    def test_sort_matches_oracle(self, sets):
        """sort_label_keys orders any label sets exactly like Prometheus' labels.Compare."""
        keys = [encode_labels(d.items()) for d in sets]
        order = [keys[i] for i in sort_label_keys(keys)]
        expect = sorted(keys, key=functools.cmp_to_key(
            lambda x, y: prom_compare(decode_labels(x), decode_labels(y))))
        self.assertEqual(order, expect)


class IndexLayoutTests(_Tmp):
    def setUp(self):
        super().setUp()
        self.size = write_index(self.path, SAMPLE)
        self.raw = open(self.path, "rb").read()

    def toc(self):
        t = self.raw[-52:]
        self.assertEqual(struct.unpack(">I", t[48:])[0], encoding.crc32c(t[:48]))
        return struct.unpack(">6Q", t[:48])

    def test_header_and_toc(self):
        """The file starts with magic 0xBAAAD700 and version 2, and ends with a CRC'd TOC."""
        self.assertEqual(len(self.raw), self.size)
        self.assertEqual(self.raw[:5], bytes.fromhex("BAAAD70002"))
        sym, ser, li, lot, post, pot = self.toc()
        self.assertEqual(sym, 5)
        self.assertTrue(sym < ser < post < pot < len(self.raw) - 52)
        self.assertEqual(li, post)          # no label indices written
        self.assertEqual(lot, pot)          # no label offset table written

    def test_symbol_table(self):
        """Symbols are sorted, unique, length-prefixed and covered by their CRC."""
        sym = self.toc()[0]
        ln, cnt = struct.unpack(">II", self.raw[sym:sym + 8])
        body = self.raw[sym + 4:sym + 4 + ln]
        self.assertEqual(struct.unpack(">I", self.raw[sym + 4 + ln:sym + 8 + ln])[0], encoding.crc32c(body))
        out, i = [], 4
        while i < len(body):
            n, i = uvarint(body, i)
            out.append(body[i:i + n])
            i += n
        self.assertEqual(len(out), cnt)
        self.assertEqual(out, sorted(set(out)))
        self.assertEqual(set(out), {b"__name__", b"up", b"job", b"a", b"b", b"instance", b"x:1",
                                    b"1", b"2", b"ab", b"0"})

    def test_series_aligned_and_sorted(self):
        """Series entries sit on 16-byte boundaries, ids are offset/16, in label-set order, with CRCs."""
        r = self.open()
        ids = list(r.all_postings())
        self.assertEqual(ids, sorted(ids))
        keys = []
        for sid in ids:
            off = sid * 16
            n, i = uvarint(self.raw, off)
            self.assertEqual(struct.unpack(">I", self.raw[i + n:i + n + 4])[0],
                             encoding.crc32c(self.raw[i:i + n]))
            keys.append(r.series(sid)[0])
        self.assertEqual(keys, [K(__name__="up", instance="x:1", job="a"),
                                K(__name__="up", instance="x:1", job="b"),
                                K(a="1"), K(a="1", b="2"), K(ab="0")])
        self.assertEqual(ids[0] * 16, self.toc()[1])

    def test_postings_layout(self):
        """Postings lists are 4-byte aligned with CRCs; the all-postings list comes first."""
        sym, ser, li, lot, post, pot = self.toc()
        table = self.open().postings_table()
        self.assertEqual(table[""], [("", post)])
        offsets = sorted(o for entries in table.values() for _, o in entries)
        self.assertEqual(offsets[0], post)
        for off in offsets:
            self.assertEqual(off % 4, 0)
            ln, cnt = struct.unpack(">II", self.raw[off:off + 8])
            self.assertEqual(ln, 4 + 4 * cnt)
            self.assertEqual(struct.unpack(">I", self.raw[off + 4 + ln:off + 8 + ln])[0],
                             encoding.crc32c(self.raw[off + 4:off + 4 + ln]))

    def test_postings_offset_table_sorted(self):
        """The offset table lists ("","") first, then (name, value) sorted bytewise, with a CRC."""
        pot = self.toc()[5]
        ln, cnt = struct.unpack(">II", self.raw[pot:pot + 8])
        body = self.raw[pot + 4:pot + 4 + ln]
        self.assertEqual(struct.unpack(">I", self.raw[pot + 4 + ln:pot + 8 + ln])[0], encoding.crc32c(body))
        i, pairs = 4, []
        for _ in range(cnt):
            self.assertEqual(body[i], 2)
            n, i = uvarint(body, i + 1)
            name = body[i:i + n]; i += n
            n, i = uvarint(body, i)
            value = body[i:i + n]; i += n
            _, i = uvarint(body, i)
            pairs.append((name, value))
        self.assertEqual(i, len(body))
        self.assertEqual(pairs[0], (b"", b""))
        self.assertEqual(pairs, sorted(pairs))
        self.assertEqual(len(pairs), 1 + 7)


class IndexReaderTests(_Tmp):
    def test_round_trip_sample(self):
        """Labels, chunk metas, postings and label values read back as written."""
        write_index(self.path, SAMPLE)
        r = self.open()
        self.assertEqual(r.version, 2)
        self.assertEqual(r.label_names(), ["__name__", "a", "ab", "b", "instance", "job"])
        self.assertEqual(r.label_values("job"), ["a", "b"])
        self.assertEqual(r.label_values("nope"), [])
        got = {}
        for sid in r.all_postings():
            key, mints, maxts, refs = r.series(sid)
            got[key] = list(zip(mints, maxts, refs))
        self.assertEqual(got, {k: list(m) for k, m in SAMPLE})
        job_b = r.postings("job", "b")
        self.assertEqual(len(job_b), 1)
        self.assertEqual(r.series(job_b[0])[0], SAMPLE[0][0])
        self.assertEqual(len(r.postings("__name__", "up")), 2)
        self.assertEqual(len(r.postings("job", "zzz")), 0)
        self.assertEqual(len(r), 5)

    def test_array_metas_and_writer_class(self):
        """Chunk metas given as three arrays, through IndexWriter, give the same index bytes."""
        from array import array
        write_index(self.path, SAMPLE)
        expect = open(self.path, "rb").read()
        w = IndexWriter(self.path)
        for key, metas in SAMPLE:
            w.add(key, (array("q", [m[0] for m in metas]), array("q", [m[1] for m in metas]),
                        array("Q", [m[2] for m in metas])))
        w.finish()
        self.assertEqual(open(self.path, "rb").read(), expect)

    def test_empty_index(self):
        """An index without series is valid and reads back empty."""
        write_index(self.path, [])
        r = self.open()
        self.assertEqual(len(r), 0)
        self.assertEqual(r.label_names(), [])

    @settings(max_examples=40, deadline=None)
    @given(st.dictionaries(
        st.frozensets(st.tuples(st.sampled_from(["a", "b", "job", "__name__", "x" * 200]),
                                st.text(min_size=1, max_size=5)), max_size=5),
        st.lists(st.tuples(st.integers(-2**40, 2**40), st.integers(0, 10**6)), max_size=5),
        max_size=40))
    def test_round_trip_random(self, spec):
        """Random label sets and chunk metas survive a write and read, and postings agree with labels."""
        series = {}
        for lset, chunks in spec.items():
            d = dict(lset)
            if len(d) != len(lset):
                continue
            metas, t, ref = [], -2**41, 0
            for start, width in sorted(chunks):
                mint = max(start, t + 1)
                metas.append((mint, mint + width, ref))
                t, ref = mint + width, ref + 1000
            series[encode_labels(d.items())] = metas
        write_index(self.path, list(series.items()))
        r = self.open()
        seen = {}
        for sid in r.all_postings():
            key, mints, maxts, refs = r.series(sid)
            seen[key] = list(zip(mints, maxts, refs))
            for name, value in decode_labels(key):
                self.assertIn(sid, r.postings(name, value))
        self.assertEqual(seen, series)
        total = sum(len(r.postings(n, v)) for n in r.label_names() for v in r.label_values(n))
        self.assertEqual(total, sum(len(decode_labels(k)) for k in series))

    def test_bad_input_rejected(self):
        """Duplicate series, overlapping chunks and malformed keys raise ValueError."""
        with self.assertRaises(ValueError):
            write_index(self.path, [(K(a="1"), []), (K(a="1"), [])])
        with self.assertRaises(ValueError):
            write_index(self.path, [(K(a="1"), [(0, 10, 8), (10, 20, 30)])])
        with self.assertRaises(ValueError):
            write_index(self.path, [(K(a="1"), [(10, 0, 8)])])
        with self.assertRaises(ValueError):
            write_index(self.path, [(b"\x05\x01a", [])])


class IndexCorruptionTests(_Tmp):
    def setUp(self):
        super().setUp()
        write_index(self.path, SAMPLE)
        self.raw = bytearray(open(self.path, "rb").read())
        self.toc = struct.unpack(">6Q", bytes(self.raw[-52:-4]))

    def corrupt(self, pos, xor=0x01):
        raw = bytearray(self.raw)
        raw[pos] ^= xor
        open(self.path, "wb").write(raw)

    def test_bad_magic_version_toc(self):
        """Wrong magic, an unknown version or a damaged TOC make the open fail with CorruptionError."""
        for pos in (0, 4, len(self.raw) - 10, len(self.raw) - 1):
            self.corrupt(pos, 0x08)
            with self.assertRaises(CorruptionError, msg=pos):
                IndexReader(self.path)
        open(self.path, "wb").write(self.raw[:40])
        with self.assertRaises(CorruptionError):
            IndexReader(self.path)

    def test_symbol_and_offset_table_crc(self):
        """A flipped byte in the symbol table or the postings offset table fails the open."""
        for pos in (self.toc[0] + 10, self.toc[5] + 10):
            self.corrupt(pos)
            with self.assertRaises(CorruptionError, msg=pos):
                IndexReader(self.path)

    def test_series_and_postings_crc(self):
        """A flipped byte in a series entry or a postings list is reported when it is read."""
        self.corrupt(self.toc[1] + 3)
        r = self.open()
        first = r.all_postings()[0]
        with self.assertRaises(CorruptionError):
            r.series(first)
        self.assertEqual(len(IndexReader(self.path, verify=False).series(first)), 4)
        self.corrupt(self.toc[4] + 9)
        r = self.open()
        with self.assertRaises(CorruptionError):
            r.all_postings()

    def test_bad_series_id(self):
        """Series ids outside the series section raise CorruptionError, not a crash."""
        r = self.open()
        for sid in (0, 1, 10**9, len(self.raw) // 16):
            with self.assertRaises(CorruptionError, msg=sid):
                r.series(sid)
