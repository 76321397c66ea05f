"""Shipped data: diffusers-format SDXL config folders and CLIP tokenizer files (installed as kxl_resources)."""
