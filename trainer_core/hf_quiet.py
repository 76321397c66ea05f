"""Keep diffusers/transformers quiet and offline.

The workbench never talks to a model hub (many training boxes have no route to one), so every entry point that
may touch diffusers/transformers sets HF_HUB_OFFLINE first. Their config-sanity warnings about our tiny demo
model are noise to a user and are silenced while we build components.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

_LOGGERS = ("transformers", "diffusers")

# bitsandbytes >= 0.50 (imported by diffusers, and by the trainer for Lion8bit) asks the `kernels` package at
# import time for a CPU kernel from the Hugging Face Hub ("kernels-community/quantization-bitsandbytes") on CPUs
# with AVX512-BF16. Offline, `kernels` logs "Skipping publisher trust check ..." and bitsandbytes "Failed to load
# CPU gemm_4bit_forward from kernels-community ..." on every command. bitsandbytes has no setting that turns the
# lookup off, so the lookup itself is stopped: `kernels` is marked as not importable (a None entry in sys.modules
# makes `import kernels` raise ImportError and importlib.util.find_spec report it absent, which is how diffusers
# checks for it). bitsandbytes then keeps its built-in CPU code, the one we use anyway (the workbench runs no 4-bit
# matmuls). transformers (5.x) would otherwise "kernelize" models it loads with hub kernels by default and insist
# on the package; USE_HUB_KERNELS=NO is its switch for that. Set KXL_ALLOW_HUB_KERNELS=1 (or USE_HUB_KERNELS=YES)
# to leave all of this alone.
HUB_KERNELS_ENV = "KXL_ALLOW_HUB_KERNELS"
_HUB_KERNEL_NOISE = ("publisher trust check", "kernels-community")
_TRUE = ("1", "true", "yes", "on")


def block_hub_kernels() -> bool:
    """Make `import kernels` fail and switch transformers' hub kernels off, unless the user opted in or
    `kernels` was imported already; True when blocked."""
    if os.environ.get(HUB_KERNELS_ENV, "").strip().lower() in _TRUE:
        return False
    if os.environ.get("USE_HUB_KERNELS", "").strip().lower() in _TRUE:
        return False
    if sys.modules.get("kernels", None) is not None:
        return False  # someone imported it on purpose before us; do not pull it from under them
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    sys.modules["kernels"] = None  # type: ignore[assignment]
    return True


class _HubKernelNoise(logging.Filter):
    """Drops the two hub-kernel lines, in case `kernels` was imported before this module (belt and braces)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format is not ours to judge
            return True
        return not any(part in message for part in _HUB_KERNEL_NOISE)


block_hub_kernels()
for _name in ("kernels", "kernels._internals.hf_hub", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).addFilter(_HubKernelNoise())
# bitsandbytes' CPU backend also warns when that optional kernel is missing; the line only confuses users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in _LOGGERS}
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
