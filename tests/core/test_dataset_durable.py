"""Export file writes: exact bytes on both write paths, a file system refusing O_DIRECT, a full disk."""

from __future__ import annotations

import errno
import os

import pytest

from trainer_core.dataset import durable
from trainer_core.dataset.durable import write_new_file
from trainer_core.errors import KxlError


@pytest.mark.parametrize("size", [0, 100, 65536, 65537, 400_001])
@pytest.mark.parametrize("direct", [True, False])
def test_written_file_holds_exactly_the_data(tmp_path, size, direct):
    data = os.urandom(size)
    path = tmp_path / "1.webp"
    path.write_bytes(b"old content that must be replaced entirely" * 5000)
    write_new_file(str(path), data, direct=direct)
    assert path.read_bytes() == data


def test_a_file_system_refusing_direct_writes_falls_back_for_good(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "_direct_ok", [True])

    def refuse(fd, data):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(durable, "_write_direct", refuse)
    data = os.urandom(200_000)
    write_new_file(str(tmp_path / "a.webp"), data, direct=True)
    assert (tmp_path / "a.webp").read_bytes() == data
    assert durable._direct_ok == [False]


def test_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable.os, "write", full)
    with pytest.raises(KxlError, match="disk full") as e:
        write_new_file(str(tmp_path / "7.png"), b"x" * 10, direct=False)
    assert "7.png" in str(e.value)
    assert list(tmp_path.iterdir()) == []
