"""Unbuffered sequential I/O: exact bytes whatever the sizes, with and without O_DIRECT, and clear errors."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from trainer_core import direct_io
from trainer_core.direct_io import ALIGN, SequentialWriter, aligned_array, open_direct_read, read_at
from trainer_core.errors import CheckpointError, KxlError


@pytest.fixture(params=[True, False], ids=["direct", "buffered"])
def direct(request) -> bool:
    return request.param


def test_aligned_array_starts_on_a_block_boundary():
    for n in (1, ALIGN - 1, ALIGN, 3 * ALIGN + 5):
        a = aligned_array(n)
        assert a.ctypes.data % ALIGN == 0
        assert a.size >= n and a.size % ALIGN == 0


@pytest.mark.parametrize(
    "sizes", [[0], [10], [ALIGN], [5, ALIGN * 3 + 1, 70_000], [SequentialWriter.STAGE_BYTES + 123, 7]]
)
def test_writer_produces_exactly_the_bytes_written(tmp_path, monkeypatch, direct, sizes):
    monkeypatch.setattr(SequentialWriter, "STAGE_BYTES", 64 * 1024 if max(sizes) < 2**20 else 2**20)
    rng = np.random.default_rng(sum(sizes))
    chunks = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    path = tmp_path / "out.bin"
    w = SequentialWriter(path, direct=direct)
    for c in chunks:
        w.write(c)
    w.close()
    assert path.read_bytes() == b"".join(chunks)


def test_disk_full_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SequentialWriter, "STAGE_BYTES", 8192)
    monkeypatch.setattr(direct_io.os, "pwritev", full, raising=False)
    monkeypatch.setattr(direct_io.os, "write", full)
    path = tmp_path / "out.bin"
    w = SequentialWriter(path, direct=False)
    with pytest.raises(KxlError, match="disk full") as e:
        for _ in range(10):
            w.write(bytes(8192))
        w.close()
    assert "out.bin" in str(e.value)
    w.abort()


def test_read_at_reads_unaligned_tails_and_names_a_truncated_file(tmp_path):
    path = tmp_path / "in.bin"
    data = np.random.default_rng(0).integers(0, 256, 3 * ALIGN + 100, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    fd = open_direct_read(path)
    if fd is None:  # a file system without O_DIRECT: the plain descriptor must behave the same
        fd = os.open(path, os.O_RDONLY)
    try:
        buf = aligned_array(4 * ALIGN)
        got = read_at(fd, memoryview(buf), 0, len(data), path)
        assert got == len(data) and buf[:got].tobytes() == data
        got = read_at(fd, memoryview(buf)[: 2 * ALIGN], 2 * ALIGN, ALIGN + 100, path)
        assert buf[: ALIGN + 100].tobytes() == data[2 * ALIGN :]
        with pytest.raises(CheckpointError, match="truncated") as e:
            read_at(fd, memoryview(buf), 0, len(data) + 1, path)
        assert "in.bin" in str(e.value)
    finally:
        os.close(fd)


def test_no_direct_io_switch_disables_it(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(ALIGN))
    monkeypatch.setattr(direct_io, "_DISABLED", True)
    assert open_direct_read(path) is None
    w = SequentialWriter(tmp_path / "g.bin")
    assert not w.direct
    w.close()
