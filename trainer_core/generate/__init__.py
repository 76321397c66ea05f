"""Image generation: A1111-compatible prompt parsing and chunking, text encoding, SDXL pipeline, PNG infotext.

Submodules are imported explicitly by their users (`trainer_core.generate.prompt`, `...infotext`); nothing is
imported here so that the GUI can touch the package without paying for torch/diffusers.
"""
