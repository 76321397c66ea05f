"""Upload years from Danbooru's `created_at` strings, the way HakuBooru reads them (specs/dataset.md §3.6).

Its own parser (`dateutil`) accepts anything; Danbooru writes one fixed ISO layout, which `years_of` reads for a
whole column at once with numpy and hands every other string to `year_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np


def _dateutil_year(text: str) -> int:
    try:
        from dateutil import parser  # HakuBooru's parser; optional, only for non-ISO strings
    except ImportError:
        return 0
    try:
        return parser.parse(text).year
    except (ValueError, OverflowError, TypeError):
        return 0


def year_of(created_at: str) -> int:
    """The post's upload year in the offset written in the string; 0 when it does not parse (HakuBooru's rule)."""
    try:
        return datetime.fromisoformat(created_at).year
    except (ValueError, TypeError):
        return _dateutil_year(created_at) if created_at and created_at.strip() else 0


# Danbooru's own spelling, `2024-05-19T01:30:25.096-04:00`: 29 ASCII characters at fixed places.
_ISO_LEN = 29
_ISO_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22, 24, 25, 27, 28)
_ISO_MARKS = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":", 19: b".", 26: b":"}
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def years_of(created_at: Sequence[str]) -> np.ndarray:
    """`year_of` of every string, vectorised for Danbooru's fixed layout.

    A string in exactly that layout, with every field in range (the checks `datetime.fromisoformat` makes), has
    its year in its first four digits; anything else (another layout, an impossible date) goes through `year_of`
    itself, so the result is always `year_of`'s.
    """
    n = len(created_at)
    years = np.zeros(n, np.int64)
    if n == 0:
        return years
    lens = np.fromiter(map(len, created_at), np.int64, count=n)
    fixed = np.flatnonzero(lens == _ISO_LEN)
    ok = np.zeros(n, bool)
    if fixed.size:
        raw = "".join([created_at[i] for i in fixed.tolist()]).encode("utf-8", "surrogatepass")
        if len(raw) == fixed.size * _ISO_LEN:  # all ASCII, so byte columns are character columns
            m = np.frombuffer(raw, np.uint8).reshape(fixed.size, _ISO_LEN).astype(np.int64)
            d = m - ord("0")
            good = np.all((d[:, _ISO_DIGITS] >= 0) & (d[:, _ISO_DIGITS] <= 9), axis=1)
            for col, mark in _ISO_MARKS.items():
                good &= m[:, col] == mark[0]
            good &= (m[:, 23] == ord("+")) | (m[:, 23] == ord("-"))

            def num(a: int, b: int) -> np.ndarray:
                out = np.zeros(fixed.size, np.int64)
                for c in range(a, b):
                    out = out * 10 + d[:, c]
                return out

            year, month, day = num(0, 4), num(5, 7), num(8, 10)
            leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
            month_ok = (month >= 1) & (month <= 12)
            dim = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
            good &= (year >= 1) & month_ok & (day >= 1) & (day <= dim)
            good &= (num(11, 13) <= 23) & (num(14, 16) <= 59) & (num(17, 19) <= 59)
            good &= (num(24, 26) <= 23) & (num(27, 29) <= 59)
            years[fixed[good]] = year[good]
            ok[fixed[good]] = True
    for i in np.flatnonzero(~ok).tolist():
        years[i] = year_of(created_at[i])
    return years
