"""Moved to `trainer_core.buckets` (a leaf shared by the trainer, the Tags statistics and the GUI)."""

from ..buckets import *  # noqa: F401,F403
