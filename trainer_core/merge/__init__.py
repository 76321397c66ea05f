"""Checkpoint merging: weighted sum / add-difference / per-block weights, CLIP embedding revert, LoKr bake.

Streaming: inputs are read tensor by tensor with plain file reads (no memory map, so resident memory stays at a
few tensors even for 7 GB inputs) and the output is written as it is produced into a header planned up front.
"""
