"""SDXL merge blocks, as supermerger and ComfyUI's ModelMergeSDXL name them: BASE, IN00–IN08, MID, OUT00–OUT08.

BASE is everything outside the UNet's input/middle/output blocks: time and label embeddings, the UNet's `out`
layers, both text encoders and the VAE.
"""

from __future__ import annotations

import re

from ..models.sdxl_layout import UNET_PREFIX

BLOCKS = ("BASE", *(f"IN{i:02d}" for i in range(9)), "MID", *(f"OUT{i:02d}" for i in range(9)))
_BLOCK_RE = re.compile(re.escape(UNET_PREFIX) + r"(input_blocks|middle_block|output_blocks)\.(\d+)?")


def block_of(sgm_key: str) -> str:
    m = _BLOCK_RE.match(sgm_key)
    if not m:
        return "BASE"
    if m[1] == "middle_block":
        return "MID"
    prefix = "IN" if m[1] == "input_blocks" else "OUT"
    return f"{prefix}{int(m[2]):02d}"
