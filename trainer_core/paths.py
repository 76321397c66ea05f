"""Where things live: shipped resources, the per-user data dir, the default demo workspace."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

APP_DIR_NAME = "kohaku-xl-workbench"


def resources_dir() -> Path:
    """The shipped `resources/` folder (source checkout, editable install or installed `kxl_resources`)."""
    override = os.environ.get("KXL_RESOURCES")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parents[1] / "resources"
    if here.is_dir():
        return here
    spec = importlib.util.find_spec("kxl_resources")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    frozen = getattr(sys, "_MEIPASS", None)  # PyInstaller one-folder build
    if frozen:
        return Path(frozen) / "resources"
    raise RuntimeError("cannot find the resources folder; reinstall Kohaku XL Workbench")


def sdxl_config_dir() -> Path:
    """diffusers-format config folder with the real SDXL base values and both CLIP tokenizers."""
    return resources_dir() / "sdxl"


def user_data_dir() -> Path:
    """Per-user data folder (XDG on Linux, %APPDATA% on Windows, Application Support on macOS).

    `KXL_DATA_DIR` overrides it, which tests use to stay out of the real home folder.
    """
    override = os.environ.get("KXL_DATA_DIR")
    if override:
        return Path(override)
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / APP_DIR_NAME


def default_demo_workspace() -> Path:
    return user_data_dir() / "demo-workspace"


def cache_dir() -> Path:
    return user_data_dir() / "cache"
