"""`sd-scripts-dataset.toml`: a dataset config that kohya-ss/sd-scripts accepts as `--dataset_config`, as is.

sd-scripts validates that file strictly: the top level holds only `[general]` and `[[datasets]]`, every table
only the option names it knows (anything else fails with "extra keys not allowed"). So this file holds nothing
of ours; how the folder was built stays in `kxl-dataset.toml`. The values are the Kohaku XL Delta card's caption
and bucket settings (the defaults of trainer_core.train.config.DatasetConfig, i.e. the "kohaku-xl-delta" preset):

    [general]   shuffle_caption, caption_extension = ".txt", keep_tokens, keep_tokens_separator = "|||",
                caption_tag_dropout_rate, caption_dropout_rate, random_crop, enable_bucket, resolution,
                min_bucket_reso, max_bucket_reso, bucket_reso_steps, bucket_no_upscale
    [[datasets]] / [[datasets.subsets]]   image_dir = "<repeats>_<name>", num_repeats

sd-scripts takes a relative `image_dir` relative to its working directory, not to the config file; the path is
written relative (so the folder can be moved or copied to a training machine), and the file's header says to
start the training from the dataset folder, or to make the path absolute. Options that sd-scripts only reads
from its command line (`--max_token_length 225`, batch size, learning rates) are named in the header too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from ..atomic import atomic_write_text_checked

CAPTION_EXTENSION = ".txt"


def sd_scripts_dataset_config(subfolder: str, repeats: int, settings: Any = None) -> dict[str, Any]:
    """The config as a dict. `settings` is a DatasetConfig (train/config.py); None means the card's values."""
    settings = _card_settings() if settings is None else settings
    general = {
        "shuffle_caption": bool(settings.shuffle_caption),
        "caption_extension": CAPTION_EXTENSION,
        "keep_tokens": int(settings.keep_tokens),
        "keep_tokens_separator": str(settings.keep_tokens_separator),
        "caption_tag_dropout_rate": float(settings.caption_tag_dropout_rate),
        "caption_dropout_rate": float(settings.caption_dropout_rate),
        "random_crop": bool(settings.random_crop),
        "enable_bucket": True,
        "resolution": int(settings.resolution),
        "min_bucket_reso": int(settings.min_bucket_reso),
        "max_bucket_reso": int(settings.max_bucket_reso),
        "bucket_reso_steps": int(settings.bucket_step),
        "bucket_no_upscale": bool(settings.bucket_no_upscale),
    }
    subset = {"image_dir": subfolder, "num_repeats": int(repeats)}
    return {"general": general, "datasets": [{"subsets": [subset]}]}


def _card_settings() -> Any:
    from ..train.config import DatasetConfig

    return DatasetConfig()


def sd_scripts_dataset_text(subfolder: str, repeats: int, settings: Any = None) -> str:
    """The file's text: a comment header saying how to use it, then the TOML."""
    settings = _card_settings() if settings is None else settings
    config = sd_scripts_dataset_config(subfolder, repeats, settings)
    max_tokens = int(settings.max_token_length)
    header = (
        "# kohya-ss/sd-scripts dataset config for this folder, written by Kohaku XL Workbench.\n"
        "# Use it as: sdxl_train_network.py --dataset_config sd-scripts-dataset.toml "
        f"--max_token_length {max_tokens} ...\n"
        "# started from this folder: sd-scripts reads image_dir relative to its working directory\n"
        "# (or replace image_dir with the absolute path of the image folder).\n"
        "# How the dataset was built is in kxl-dataset.toml; sd-scripts rejects any key it does not know,\n"
        "# so keep Kohaku XL settings out of this file.\n"
    )
    return header + tomli_w.dumps(config)


def write_sd_scripts_config(folder: Path, name: str, subfolder: str, repeats: int, hint: str) -> Path:
    """Write the config into `folder` atomically (fsync + rename); `hint` says what to do on a full disk."""
    path = Path(folder) / name
    atomic_write_text_checked(path, sd_scripts_dataset_text(subfolder, repeats), hint)
    return path
