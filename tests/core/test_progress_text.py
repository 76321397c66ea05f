"""The CLI's progress lines: readable sizes for byte counts, plain counts for everything else."""

from __future__ import annotations

import io

from trainer_core.progress import format_bytes, text_progress


def test_byte_progress_reads_in_binary_units_and_counts_stay_counts():
    out = io.StringIO()
    p = text_progress(out, unit="B")
    p.stage("Merging 3 tensors")
    p.update(3 * 2**30, 3 * 2**30)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Merging 3 tensors"
    assert "100.0%  3.0 GiB of 3.0 GiB" in lines[1] and lines[1].endswith("/s")
    assert " B/s" not in lines[1] and "3,221,225,472" not in lines[1]

    out = io.StringIO()
    p = text_progress(out, unit="posts")
    p.stage("Captioning")
    p.update(400, 400)
    assert "400/400 posts" in out.getvalue().splitlines()[1]


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * 2**20, 7.5 * 2**30)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "7.5 GiB",
    ]
