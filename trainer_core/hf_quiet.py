"""Keep diffusers/transformers quiet and offline.

The workbench never talks to a model hub (many training boxes have no route to one), so every entry point that
may touch diffusers/transformers sets HF_HUB_OFFLINE first. Their config-sanity warnings about our tiny demo
model are noise to a user and are silenced while we build components.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

_LOGGERS = ("transformers", "diffusers")
# diffusers imports bitsandbytes, whose CPU backend warns at import time that an optional hub-downloaded kernel
# is missing. We never want that kernel (it would need the network) and the line only confuses users.
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
