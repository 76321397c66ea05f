"""The default first-pass size for a model: its training resolution (1024² for SDXL, 128² for the demo models)."""

from __future__ import annotations

from pathlib import Path

SDXL_NATIVE_SIZE = 1024
DEMO_NATIVE_SIZE = 128  # trainer_core/models/demo_base_data.py NATIVE_SIZE: what the demo base was trained at

NATIVE_SIZES = {"kxl-demo": DEMO_NATIVE_SIZE, "kxl-tiny": DEMO_NATIVE_SIZE}
"""Architectures trained below SDXL's 1024²; every other SDXL checkpoint keeps 1024²."""


def native_size(arch: str | None) -> int:
    return NATIVE_SIZES.get(arch or "", SDXL_NATIVE_SIZE)


def default_generation_size(checkpoint: str | Path | object) -> tuple[int, int]:
    """(width, height) to generate at with `checkpoint` (a path, or a CheckpointInfo the caller already has).

    Header-only (no torch), so the GUI may call it when a model is picked. A file that cannot be read gets SDXL's
    1024²: the generation itself then reports what is wrong with it.
    """
    from ..errors import KxlError
    from ..models.checkpoint_info import CheckpointInfo, describe_checkpoint

    if isinstance(checkpoint, CheckpointInfo):
        arch = checkpoint.arch
    else:
        try:
            arch = describe_checkpoint(Path(checkpoint)).arch
        except (KxlError, OSError):
            arch = None
    side = native_size(arch)
    return side, side
