"""The two SDXL CLIP tokenizers, loaded offline from the shipped config folder.

transformers 5 only has the `tokenizers`-backed CLIPTokenizer, whose normaliser is NFC + whitespace collapse +
lower-case. The slow tokenizer that A1111 uses ran `ftfy.fix_text` first (curly quotes -> straight, full-width ->
half-width, HTML entities, mojibake), so prompts with such characters tokenized differently. `with_ftfy`
restores that pre-pass to keep A1111 token ids and chunk counts (specs/generation.md §3).
"""

from __future__ import annotations

import functools
import os
import types
from pathlib import Path
from typing import Any

import ftfy
from transformers import CLIPTokenizer

from ..errors import KxlError
from ..paths import sdxl_config_dir

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def _fix(text: Any) -> Any:
    if isinstance(text, str):
        return ftfy.fix_text(text)
    if isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text):
        return [ftfy.fix_text(item) for item in text]
    return text


def _encode_plus_with_ftfy(
    self: CLIPTokenizer, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any
) -> Any:
    # Every public entry point (__call__, encode, tokenize) funnels into _encode_plus; pre-split words are left
    # alone because the caller already chose the word boundaries.
    if not kwargs.get("is_split_into_words", False):
        text = _fix(text)
        text_pair = _fix(text_pair)
    return CLIPTokenizer._encode_plus(self, text, text_pair, *args, **kwargs)


def with_ftfy(tokenizer: CLIPTokenizer) -> CLIPTokenizer:
    """Make `tokenizer` run `ftfy.fix_text` on raw text first, as transformers' slow CLIP tokenizer did.

    Patched on the instance rather than subclassed: diffusers records a component's class in model_index.json on
    save_pretrained and cannot load a pipeline naming a class outside transformers/diffusers.
    """
    tokenizer._encode_plus = types.MethodType(_encode_plus_with_ftfy, tokenizer)
    return tokenizer


def load_sdxl_tokenizers(config_dir: Path | None = None) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """(tokenizer, tokenizer_2) from `config_dir` (default: the shipped SDXL folder); never touches the network.

    The pair is cached per folder and shared between callers: treat it as read-only (pass padding/truncation
    per call instead of changing attributes).
    """
    folder = Path(config_dir) if config_dir is not None else sdxl_config_dir()
    return _load_cached(folder.resolve())


@functools.lru_cache(maxsize=4)
def _load_cached(folder: Path) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    # Defensive: the files are local, but a stray hub lookup must fail fast rather than hang on a dead network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pair = []
    for sub in ("tokenizer", "tokenizer_2"):
        path = folder / sub
        missing = [name for name in TOKENIZER_FILES if not (path / name).is_file()]
        if missing:
            raise KxlError(
                f"CLIP tokenizer folder is missing {', '.join(missing)}",
                path=path,
                hint="reinstall Kohaku XL Workbench, or regenerate with scripts/build_clip_tokenizer.py",
            )
        try:
            pair.append(with_ftfy(CLIPTokenizer.from_pretrained(str(path), local_files_only=True)))
        except (OSError, ValueError) as exc:
            raise KxlError(f"cannot load the CLIP tokenizer: {exc}", path=path) from exc
    return pair[0], pair[1]
