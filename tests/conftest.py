"""Test-wide environment and small workspace builders.

The environment is set at import time, before any test module imports Qt or huggingface_hub: Qt reads
QT_QPA_PLATFORM when the QApplication is created, and KXL_DATA_DIR keeps settings, logs, hash caches and the
demo workspace out of the real home folder.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ["HF_HUB_OFFLINE"] = "1"
_SESSION_DATA_DIR = Path(tempfile.mkdtemp(prefix="kxl-test-data-"))
os.environ["KXL_DATA_DIR"] = str(_SESSION_DATA_DIR)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    shutil.rmtree(_SESSION_DATA_DIR, ignore_errors=True)


def write_metadata_db(
    path: Path, posts: int = 3, tags: int = 2, relations: int = 5, schema: bool = True
) -> Path:
    """A HakuBooru-schema SQLite DB with the given row counts (schema=False: a SQLite file with other tables)."""
    from trainer_core.danbooru.schema import POST_COLUMNS, create_schema

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        if not schema:
            conn.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, file TEXT)")
            conn.commit()
            return path
        create_schema(conn)
        defaults = {"INTEGER": 0, "VARCHAR(255)": ""}
        names = [c[0] for c in POST_COLUMNS]
        for i in range(1, posts + 1):
            row = {n: defaults[t] for n, t, _ in POST_COLUMNS}
            row.update(id=i, created_at="2023-01-01T00:00:00.000-05:00", file_ext="webp")
            conn.execute(
                f"INSERT INTO post ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [row[n] for n in names],
            )
        for t in range(1, tags + 1):
            conn.execute("INSERT INTO tag VALUES (?, ?, 0, 0)", (t, f"tag_{t}"))
        for r in range(1, relations + 1):
            conn.execute("INSERT INTO posttagrelation VALUES (?, ?, ?)", (r, 1 + r % posts, 1 + r % tags))
        conn.commit()
    finally:
        conn.close()
    return path


def write_tiny_checkpoint(path: Path, dtype=np.float16, truncate: bool = False) -> Path:
    """A header-valid kxl-tiny single-file checkpoint: the keys and shapes `describe_checkpoint` looks at.

    truncate=True cuts the file in half (inside the tensor data), like an interrupted download."""
    from safetensors.numpy import save_file

    from trainer_core.models.architectures import CONV_IN_KEY, TE1_TOKEN_KEY, TE2_TOKEN_KEY
    from trainer_core.models.sdxl_layout import VAE_PREFIX

    tensors = {
        CONV_IN_KEY: np.zeros((32, 4, 3, 3), dtype),
        TE1_TOKEN_KEY: np.zeros((16, 32), dtype),
        TE2_TOKEN_KEY: np.zeros((16, 48), dtype),
        VAE_PREFIX + "decoder.conv_in.weight": np.zeros((8, 4, 3, 3), dtype),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    if truncate:
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    return path


def write_shard(path: Path, ids: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in ids:
            member = path.parent / f"{i}.webp"
            member.write_bytes(b"RIFF0000WEBP" + bytes(20))
            tar.add(member, arcname=f"{i}.webp")
            member.unlink()
    return path


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Path]:
    """Build a small workspace folder by hand (fast: no torch, no demo generator) and return its root."""

    def build(
        name: str = "ws",
        *,
        posts: int = 3,
        db_schema: bool = True,
        truncated_role: str | None = None,
        shards: int = 2,
    ) -> Path:
        from trainer_core.workspace import Workspace

        root = tmp_path / name
        write_metadata_db(root / "danbooru.db", posts=posts, schema=db_schema)
        (root / "images").mkdir(parents=True)
        for s in range(shards):
            write_shard(root / "images" / f"data-{s:04d}.tar", [s * 1000 + 1, s * 1000 + 2])
        checkpoints = {}
        for role in ("gamma", "beta"):
            ck = root / "models" / f"{role}.safetensors"
            write_tiny_checkpoint(ck, truncate=role == truncated_role)
            checkpoints[role] = f"models/{role}.safetensors"
        ws = Workspace(root=root, name=name, db="danbooru.db", images="images", checkpoints=checkpoints)
        ws.save()
        return root

    return build


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: on the shared 2-core CI machine (and next to trainer processes) OpenMP
    threads waiting on each other made the tiny demo model's UNet calls 10-100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
