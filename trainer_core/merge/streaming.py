"""Chunked fp32 arithmetic for the streaming merge (the reads are feeds.py's, the writes direct_io.py's).

The weighted sum runs over 256 K-element chunks: each fp16 -> fp32 conversion, multiply-add and fp32 -> out cast
touches a 1 MB fp32 buffer that stays in the core's cache instead of model-sized temporaries (2.1 G elements/s on
one core of the benchmark box; 4 M-element chunks, which spill to memory between the five passes, ran at 1.1 G/s).
Only tensors that receive a LoKr delta need a full fp32 copy (kron deltas are whole-matrix).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import KxlError

CHUNK = 1 << 18
RANGE = {"F16": 65504.0, "BF16": 3.39e38, "F32": 3.4e38, "F64": float("inf")}


@dataclass
class TensorJob:
    """How one output tensor is made: sum of weight * input tensor, then optional LoKr patches."""

    key: str
    terms: list[tuple[int, float]]  # (input index, weight)
    patches: list[Any] = field(default_factory=list)
    check: bool = True  # scan for NaN/inf/overflow (skipped when provably unnecessary)
    raw: bool = False  # non-float tensor: copied from the first term unchanged


class Arithmetic:
    """Chunk buffers for two lanes, plus a full fp32 buffer (grown on demand) for tensors that get LoKr deltas.

    Large tensors are split between the calling thread and one helper thread (torch kernels release the GIL);
    each lane owns its chunk buffers. Use as a context manager so the helper thread is shut down.
    """

    def __init__(self):
        import torch

        self._lanes = [
            (torch.empty(CHUNK, dtype=torch.float32), torch.empty(CHUNK, dtype=torch.float32))
            for _ in range(2)
        ]
        self._full = torch.empty(0, dtype=torch.float32)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-math")

    def __enter__(self) -> Arithmetic:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)

    def full(self, n: int):
        import torch

        if self._full.numel() < n:
            self._full = torch.empty(n, dtype=torch.float32)
        return self._full[:n]

    def combine(self, terms: list[tuple[Any, float]], out, check_limit: float | None, key: str) -> None:
        """out = sum(w * t) computed in fp32 chunk by chunk; `out` may be any float dtype (cast on store)."""
        flat_out = out.reshape(-1)
        flats = [(t.reshape(-1), w) for t, w in terms]
        n = flat_out.numel()
        if n <= 2 * CHUNK:
            self._run(0, flats, flat_out, 0, n, check_limit, key)
            return
        half = (n // 2 + CHUNK - 1) // CHUNK * CHUNK
        other = self._pool.submit(self._run, 1, flats, flat_out, half, n, check_limit, key)
        try:
            self._run(0, flats, flat_out, 0, half, check_limit, key)
        finally:
            other.result()  # re-raises a range error found by the helper lane

    def _run(
        self, lane: int, flats, flat_out, begin: int, end_: int, check_limit: float | None, key: str
    ) -> None:
        acc_buf, tmp_buf = self._lanes[lane]
        for s in range(begin, end_, CHUNK):
            e = min(end_, s + CHUNK)
            acc = acc_buf[: e - s]
            first, w0 = flats[0]
            acc.copy_(first[s:e])
            if w0 != 1.0:
                acc.mul_(w0)
            for t, w in flats[1:]:
                tmp = tmp_buf[: e - s]
                tmp.copy_(t[s:e])
                acc.add_(tmp, alpha=w)
            if check_limit is not None:
                check_range(acc, check_limit, key)
            flat_out[s:e].copy_(acc)


def check_range(values, limit: float, key: str) -> None:
    """NaN/inf or values beyond the output dtype's range, named by key (aminmax: ~20x cheaper than isfinite)."""
    import torch

    if values.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(values))
    if not (abs(lo) <= limit and abs(hi) <= limit):  # also false for NaN
        raise KxlError(f"the merge produced NaN/inf or values beyond the output range in '{key}' "
                       f"(min {lo:g}, max {hi:g}); check the weights and inputs, or write bf16/fp32")  # fmt: skip
