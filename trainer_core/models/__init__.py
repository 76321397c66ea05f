"""SDXL model layer: key layout, offline loading/saving, checkpoint inspection, the tiny demo model.

Submodules import torch/diffusers lazily where they can, so `describe_checkpoint` stays cheap for the GUI.
"""
