"""Remote-write 1.0 WriteRequest decoding into columns (see remotewrite.pyx)."""
from array import array
from typing import final, Iterable, Sequence

# series_flags bits
NO_METRIC_NAME: int          # __name__ absent or empty
INVALID_METRIC_NAME: int     # __name__ value not [a-zA-Z_:][a-zA-Z0-9_:]*
INVALID_LABEL_NAME: int      # a label name not [a-zA-Z_][a-zA-Z0-9_]*
DUPLICATE_LABEL_NAME: int    # a name twice (non-empty values); the first is kept in the key
LABELS_NOT_SORTED: int       # input not sorted by name (informational: the key is sorted)
EMPTY_LABEL_VALUE: int       # an empty-valued label was dropped (informational)
LABEL_NAME_TOO_LONG: int     # len(name) > max_label_name_length bytes
LABEL_VALUE_TOO_LONG: int    # len(value) > max_label_value_length bytes
TOO_MANY_LABELS: int         # more than max_label_names_per_series labels in the key
INVALID_UTF8: int            # a name or value is not valid UTF-8
SERIES_ERRORS: int           # all bits above that make a series invalid by themselves
FLAG_NAMES: dict[int, str]
METRIC_TYPES: tuple[str, ...]  # MetricMetadata.type 0..7 as Prometheus spells them

@final
class DecodedWrite:
    """One WriteRequest as columns; every per-series array has n_series entries (offsets
    n_series + 1). Series i: key keys[key_offsets[i]:key_offsets[i+1]] (labels.pxd canonical
    key: sorted, unique names, empty values dropped), hash key_hashes[i] (labels.key_hash),
    samples ts/vals[sample_offsets[i]:sample_offsets[i+1]] in wire order, exemplars
    exemplar_ts/exemplar_vals[exemplar_offsets[i]:exemplar_offsets[i+1]] with label keys
    exemplar_keys[exemplar_key_offsets[j]:exemplar_key_offsets[j+1]], native histograms
    counted (not decoded) in histogram_counts[i], validation bits series_flags[i] and
    series_bad_label[i]: index into the key's labels of the first label that set a per-label
    flag (invalid/too long/UTF-8/duplicate/invalid metric name), or -1."""
    keys: bytes
    key_offsets: array          # 'Q'
    key_hashes: array           # 'Q'
    sample_offsets: array       # 'Q'
    ts: array                   # 'q', milliseconds
    vals: array                 # 'd'
    exemplar_offsets: array     # 'Q'
    exemplar_ts: array          # 'q', milliseconds
    exemplar_vals: array        # 'd'
    exemplar_keys: bytes
    exemplar_key_offsets: array  # 'Q'
    histogram_counts: array     # 'I'
    series_flags: array         # 'I'
    series_bad_label: array     # 'i'
    metadata: list[tuple[int, str, str, str]]  # (type, metric family name, help, unit)
    n_series: int
    n_samples: int
    n_exemplars: int
    n_histograms: int
    source: int                 # Mimir WriteRequest.Source: 0 API, 1 RULE, 2 OTLP
    skip_label_validation: bool
    skip_label_count_validation: bool
    dropped_labels: int         # series that had decode()'s drop_label (removed from their key)
    first_dropped_value: bytes | None   # series 0's value of drop_label, None if it had none
    def __len__(self) -> int: ...
    def key(self, i: int) -> bytes: ...
    def labels(self, i: int) -> list[tuple[str, str]]: ...
    def exemplar_key(self, j: int) -> bytes: ...
    def flag_names(self, i: int) -> list[str]: ...

def decode(data: bytes | bytearray | memoryview, max_label_name_length: int = 1024,
           max_label_value_length: int = 2048, max_label_names_per_series: int = 30,
           drop_label: bytes = b"") -> DecodedWrite:
    """drop_label: a label name removed from every series before validation. Raises urdar.engine.errors.RemoteWriteDecodeError on malformed protobuf."""

def encode_columns(keys: bytes | bytearray | memoryview, key_offsets: array, sample_offsets: array,
                   ts: array, vals: array, series: array) -> bytes:
    """WriteRequest bytes of the batch columns' series `series` (array('Q') of indexes)."""

def encode_write_request(
    series: Iterable[Sequence],
    metadata: Iterable[tuple[int, str | bytes, str | bytes, str | bytes]] = (),
    source: int = 0,
    skip_label_validation: bool = False,
) -> bytes:
    """series items: (labels, samples[, exemplars[, histograms]]) with labels (name, value)
    pairs in emit order, samples (t, v), exemplars (labels, t, v), histograms encoded bytes."""
