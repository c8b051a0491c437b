OK: int
OUT_OF_ORDER: int
DUPLICATE: int
TOO_OLD: int
SERIES_LIMIT: int
SKIPPED: int
DUPLICATE_SAME: int
OUT_OF_BOUNDS: int
NAMES: tuple[str, ...]
STORED: frozenset[int]
