"""TensorBoard event files for a run, written by hand: scalars only, no tensorboard/tensorflow dependency.

Enabled with `output.tensorboard = true`; rank 0 writes `<run_dir>/tensorboard/events.out.tfevents.*` from the
same step events as `events.jsonl` (events.py), for people who watch runs in TensorBoard as sd-scripts and kohya_ss
users do. Tags: `loss/current`, `lr/<group>` (`lr/unet`, `lr/textencoder`, as sd-scripts names them), `grad_norm`,
`images_per_s` and `loss_scale` (fp16 runs).

File format (what TensorBoard's reader expects):
- A file is a sequence of TFRecords: uint64 length (little-endian), uint32 masked CRC-32C of those 8 bytes, the
  payload, uint32 masked CRC-32C of the payload. masked(crc) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 (mod 2^32).
- Each payload is a serialised `tensorflow.Event` protobuf: wall_time (field 1, double), step (2, int64),
  file_version (3, string, "brain.Event:2" in the first record), summary (5, message), session_log (6, message).
  Summary: value (1, repeated message); Summary.Value: tag (1, string), simple_value (2, float).
  SessionLog: status (1, enum; START = 1).
- The first scalar record of each writer is preceded by a SessionLog START at that step: TensorBoard then drops
  points at or after that step left in the folder by an earlier launch (a run resumed from an older state).
Each record is flushed when written, so TensorBoard shows a step as soon as it ends.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

TENSORBOARD_DIR = "tensorboard"
FILE_VERSION = "brain.Event:2"
SESSION_START = 1
_MASK_DELTA = 0xA282EAD8
_counter = itertools.count()


# ------------------------------------------------------------------------------------------------ CRC-32C


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, payload, the payload's masked CRC."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


# ------------------------------------------------------------------------------------------------ protobuf


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 fields: negative numbers take ten bytes, two's complement
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_scalar_value(tag: str, value: float) -> bytes:
    """A Summary.Value holding a simple_value."""
    return _bytes_field(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def encode_event(
    wall_time: float,
    step: int,
    *,
    file_version: str | None = None,
    scalars: Mapping[str, float] | None = None,
    session_status: int | None = None,
) -> bytes:
    """A serialised Event (fields in number order, as protobuf writers emit them)."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if scalars:
        summary = b"".join(_bytes_field(1, encode_scalar_value(t, v)) for t, v in scalars.items())
        out += _bytes_field(5, summary)
    if session_status is not None:
        out += _bytes_field(6, _key(1, 0) + _varint(session_status))
    return out


# ------------------------------------------------------------------------------------------------ writer


def step_scalars(fields: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one `step` event's fields (values that are missing or not numbers are left out;
    NaN and inf, written as strings in events.jsonl, are kept as floats)."""
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        number = _number(value)
        if number is not None:
            out[tag] = number

    put("loss/current", fields.get("loss"))
    lrs = fields.get("lr")
    if isinstance(lrs, Mapping):
        for group, lr in lrs.items():
            put(f"lr/{group}", lr)
    else:
        put("lr", lrs)
    put("grad_norm", fields.get("grad_norm"))
    put("images_per_s", fields.get("images_per_s"))
    put("loss_scale", fields.get("loss_scale"))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


class TensorBoardWriter:
    """Appends scalar events to a new `events.out.tfevents.*` file in `log_dir` (one file per writer)."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
        while True:
            name = f"events.out.tfevents.{int(time.time()):010d}.{host}.{os.getpid()}.{next(_counter)}"
            self.path = self.log_dir / name
            try:
                self._fh: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 - kept open for the run
                break
            except FileExistsError:
                continue
        self._started = False
        self._write(encode_event(time.time(), 0, file_version=FILE_VERSION))

    def add_scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        """One event holding every scalar of a step."""
        if not scalars:
            return
        wall = time.time() if wall_time is None else float(wall_time)
        if not self._started:
            self._started = True
            self._write(encode_event(wall, step, session_status=SESSION_START))
        self._write(encode_event(wall, step, scalars={t: float(v) for t, v in scalars.items()}))

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        self.add_scalars(step, {tag: value}, wall_time)

    def _write(self, payload: bytes) -> None:
        if self._fh is None:
            raise ValueError("TensorBoard writer is closed")
        self._fh.write(tfrecord(payload))
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
