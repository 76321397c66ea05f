"""Sorting 100k+ strings in a worker thread without freezing the GUI thread.

Python's `sorted()` over strings runs entirely in C and holds the GIL for the whole sort: over the ~170k names
and aliases of the full Danbooru tag list that is 0.1-0.4 s during which the GUI thread, which needs the GIL for
every event, cannot repaint. numpy's `argsort` releases the GIL while it sorts fixed-width byte strings, so the
same order computed there leaves the window responsive.

The byte strings are the first `PREFIX_BYTES` bytes of each string's UTF-8 form. UTF-8 keeps code-point order
byte by byte, so sorting those prefixes gives Python's order except among strings that share a whole prefix;
those few runs (a few hundred strings over the Danbooru list) are put in order with Python's sort afterwards.
numpy is imported on first use: small inputs, and the modules that import this one, never need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PREFIX_BYTES = 32
# Below this many strings Python's own sort takes a few milliseconds: not worth the numpy round trip.
NUMPY_MIN_ITEMS = 20_000


def argsort_strings(strings: Sequence[str]) -> list[int]:
    """Indices that sort `strings` in Python's order, stable: `sorted(range(n), key=strings.__getitem__)`."""
    n = len(strings)
    if n < NUMPY_MIN_ITEMS:
        return sorted(range(n), key=strings.__getitem__)
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    # numpy's fixed-width bytes drop trailing NULs ("a\0" would equal "a"); such names never come from Danbooru,
    # and a list that holds one is sorted the slow way rather than wrongly.
    if any(b"\0" in e for e in encoded):
        return sorted(range(n), key=strings.__getitem__)
    return _argsort_encoded(encoded)


def argsort_desc_int_then_string(numbers: Sequence[int], strings: Sequence[str]) -> list[int]:
    """Indices ordering items by `numbers` descending, ties by `strings` ascending (a popularity order)."""
    n = len(strings)
    if n < NUMPY_MIN_ITEMS:
        return sorted(range(n), key=lambda i: (-numbers[i], strings[i]))
    import numpy as np

    name_order = np.asarray(argsort_strings(strings), dtype=np.int64)
    name_rank = np.empty(n, dtype=np.int64)
    name_rank[name_order] = np.arange(n, dtype=np.int64)
    # lexsort: the last key is the primary one. Counts are post counts (well inside int64).
    return np.lexsort((name_rank, -np.asarray(numbers, dtype=np.int64))).tolist()


def _argsort_encoded(encoded: list[bytes]) -> list[int]:
    import numpy as np

    # One buffer of fixed-width prefixes, viewed as an array: `np.array(list_of_bytes)` would convert the whole
    # list in one C call (~50 ms with the GIL held for 250k strings); the join's generator yields it per item.
    width = PREFIX_BYTES
    buffer = b"".join(e[:width].ljust(width, b"\0") for e in encoded)
    prefixes: Any = np.frombuffer(buffer, dtype=f"S{width}")
    order = np.argsort(prefixes, kind="stable")  # GIL released while it sorts
    ordered = prefixes[order]
    same_as_next = ordered[1:] == ordered[:-1]
    out = order.tolist()
    if not same_as_next.any():
        return out
    # Runs of equal prefixes: strings shorter than the prefix are then equal as a whole (already in stable
    # order); longer ones differ somewhere past it and are ordered by their full bytes.
    starts = np.flatnonzero(same_as_next & ~np.concatenate(([False], same_as_next[:-1])))
    for start in starts.tolist():
        end = start + 1
        while end < len(same_as_next) and same_as_next[end]:
            end += 1
        run = out[start : end + 1]
        if len(encoded[run[0]]) >= PREFIX_BYTES:
            out[start : end + 1] = sorted(run, key=encoded.__getitem__)
    return out
