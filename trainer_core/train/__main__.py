"""Trainer entry point: `accelerate launch [...] -m trainer_core.train CONFIG [--resume]`."""

import sys

from .loop import main

sys.exit(main())
