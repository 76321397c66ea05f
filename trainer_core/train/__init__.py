"""Training: config and presets, aspect-ratio buckets, data, LoKr networks, the loop, events and checkpoints.

Kept empty on purpose: the GUI and the CLI import pieces of this package, and `python -m trainer_core.train` is the
trainer entry point, so importing the package itself must not pull in torch or anything heavy.
"""
