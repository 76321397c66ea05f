"""A1111 "infotext": the `parameters` text stored in generated PNGs (specs/generation.md §6).

Layout: the prompt, then `Negative prompt: ...` when there is one, then one line of `Key: value` pairs. Writing
follows A1111 v1.10 so that sd-webui's "PNG Info" and civitai read our images; reading follows A1111's parser so
that images made by sd-webui can be loaded back into the Generate tab.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import KxlError

PNG_TEXT_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"

# A1111 1.10 writes its fixed keys in this order; everything else follows in insertion order, Version last.
KEY_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
LAST_KEY = "Version"

# What a reader assumes when a key is absent (A1111 only writes non-default values for these).
DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": "0",
    "Hires resize-2": "0",
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Emphasis": "Original",
}

# Schedule labels, names and aliases that old A1111 versions appended to the sampler ("DPM++ 2M Karras").
# Matching is case-sensitive, like A1111's; the value is the label written since v1.9.
SCHEDULE_SUFFIXES = {
    "Uniform": "Uniform",
    "uniform": "Uniform",
    "Karras": "Karras",
    "karras": "Karras",
    "Exponential": "Exponential",
    "exponential": "Exponential",
    "Polyexponential": "Polyexponential",
    "polyexponential": "Polyexponential",
    "SGM Uniform": "SGM Uniform",
    "sgm_uniform": "SGM Uniform",
    "SGMUniform": "SGM Uniform",
    "KL Optimal": "KL Optimal",
    "kl_optimal": "KL Optimal",
    "Align Your Steps": "Align Your Steps",
    "align_your_steps": "Align Your Steps",
    "Simple": "Simple",
    "simple": "Simple",
    "Normal": "Normal",
    "normal": "Normal",
    "DDIM": "DDIM",
    "ddim": "DDIM",
    "Beta": "Beta",
    "beta": "Beta",
}

# key: a word char then word chars / spaces / "-" / "/"; value: a JSON-style quoted string or a comma-free run.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]+")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


# ---------------------------------------------------------------------------------------------- writing


def format_value(value: Any) -> str:
    """A value as the A1111 UI would print it: integral floats without ".0", (w, h) as "WxH"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) for v in value)
    ):
        return "x".join(format_value(v) for v in value)
    return str(value)


def quote(text: str) -> str:
    """JSON-quote a value that the reader would otherwise split or trim; leave the rest raw (A1111's rule).

    Beyond A1111 (which quotes only on `,`, newline, `:`) we also quote "", values with outer whitespace and
    values that start with `"`, so that every value survives a round trip; A1111's reader decodes them the same.
    """
    if (
        text == ""
        or any(ch in text for ch in ",\n:")
        or text != text.strip()
        or text.startswith('"')
        or "\r" in text
    ):
        return json.dumps(text, ensure_ascii=False)
    return text


def create_infotext(prompt: str, negative: str, params: Mapping[str, Any]) -> str:
    """The PNG `parameters` text for one image.

    `params` maps A1111 key names to values; None values are skipped. Known keys are written in A1111's order,
    other keys in the given order, `Version` last. A1111's omission rules are applied here so every caller gets
    them: `Clip skip` only when > 1, `RNG` only when not "GPU", `Emphasis` only when not "Original" and some
    prompt contains "(" or "[".
    """
    kept: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key.strip() != key:
            raise KxlError(
                f"infotext key {key!r} cannot be written: keys are words, spaces, '-' or '/' "
                "(at least two characters, no ':' or ',')"
            )
        if value is None or _omitted(key, value, prompt, negative):
            continue
        kept[key] = format_value(value)

    ordered = [k for k in KEY_ORDER if k in kept]
    ordered += [k for k in kept if k not in KEY_ORDER and k != LAST_KEY]
    if LAST_KEY in kept:
        ordered.append(LAST_KEY)
    params_line = ", ".join(k if kept[k] == k else f"{k}: {quote(kept[k])}" for k in ordered)

    negative_text = f"\n{NEGATIVE_PREFIX} {negative}" if negative else ""
    return f"{prompt}{negative_text}\n{params_line}".strip()


def _omitted(key: str, value: Any, prompt: str, negative: str) -> bool:
    if key == "Clip skip":
        try:
            return int(value) <= 1
        except (TypeError, ValueError):
            return False
    if key == "RNG":
        return str(value) == "GPU"
    if key == "Emphasis":
        has_syntax = any(ch in text for text in (prompt, negative) for ch in "([")
        return str(value) == "Original" or not has_syntax
    return False


# ---------------------------------------------------------------------------------------------- LoRA names

# A1111 removes ":" and "," from a network's name when it writes `Lora hashes` (its paste handler splits that
# field on "," and then ":"). We remove "<" and ">" as well, so the same name also fits in a `<lora:NAME:mult>`
# tag (a ":" would end the name there, a ">" the tag), and write that one name in both places: then A1111's
# paste handler, which looks a tag's name up in `Lora hashes`, finds the hash of every LoKr we used.
_LORA_NAME_DROP = str.maketrans("", "", ":,<>")
LORA_FALLBACK_NAME = "lokr"


def lora_infotext_name(name: str) -> str:
    """The name a LoKr goes by in infotext (`Lora hashes` and `<lora:...>` tags): `:`, `,`, `<`, `>` removed,
    line breaks made spaces, outer spaces stripped; "lokr" if nothing is left."""
    cleaned = name.translate(_LORA_NAME_DROP).replace("\r", " ").replace("\n", " ").strip()
    return cleaned or LORA_FALLBACK_NAME


def lora_name_matches(tag_name: str, file_stem: str) -> bool:
    """Whether the name in a `<lora:NAME:...>` tag refers to the LoKr file with this stem (the name as we write
    it, or the stem itself as a user may type it)."""
    return tag_name.strip() in (file_stem, lora_infotext_name(file_stem))


def lora_prompt_tag(name: str, multiplier: float) -> str:
    """`<lora:NAME:mult>` for a LoKr file stem, with the name made safe (see lora_infotext_name)."""
    value = float(multiplier)
    mult = str(int(value)) if value.is_integer() else f"{value:g}"
    return f"<lora:{lora_infotext_name(name)}:{mult}>"


def format_lora_hashes(items: Iterable[tuple[str, str]]) -> str:
    """The `Lora hashes` value for (file stem, hash) pairs: "name: hash, name: hash" (empty for none)."""
    return ", ".join(f"{lora_infotext_name(name)}: {digest}" for name, digest in items)


def parse_lora_hashes(value: str) -> dict[str, str]:
    """Read a `Lora hashes` value into {name: hash}, the way A1111's paste handler splits it (on "," then on
    the first ":"); entries without a ":" (written by tools that kept commas in names) are skipped."""
    result: dict[str, str] = {}
    for item in value.split(","):
        name, sep, digest = item.partition(":")
        if sep and name.strip():
            result[name.strip()] = digest.strip()
    return result


# ---------------------------------------------------------------------------------------------- reading


def parse_infotext(text: str, *, defaults: bool = True) -> dict[str, str]:
    """Read infotext back into {"Prompt", "Negative prompt", key: value, ...} (all values strings).

    The last line is the parameter line only if it holds at least 3 `Key: value` pairs; otherwise it is part of
    the prompt. Each prompt line is stripped, as A1111 does. Sizes "WxH" become `<Key>-1` / `<Key>-2`. Legacy
    sampler names such as "DPM++ 2M Karras" are split into Sampler + Schedule type. With `defaults`, keys A1111
    leaves out when they have their default value are filled in (see DEFAULTS).
    """
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_RE.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    result: dict[str, str] = {}
    for key, raw in _PARAM_RE.findall(last_line):
        value = _unquote(raw)
        size = _SIZE_RE.match(value)
        if size:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value

    _split_legacy_sampler(result, "Sampler", "Schedule type")
    _split_legacy_sampler(result, "Hires sampler", "Hires schedule type")
    parsed = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines), **result}
    if defaults:
        for key, value in DEFAULTS.items():
            parsed.setdefault(key, value)
    return parsed


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw
        return decoded if isinstance(decoded, str) else raw
    return raw


def _split_legacy_sampler(result: dict[str, str], sampler_key: str, schedule_key: str) -> None:
    sampler = result.get(sampler_key)
    if not sampler:
        return
    # Longest first: "X SGM Uniform" must not be read as "X SGM" + "Uniform".
    for suffix, label in sorted(SCHEDULE_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if sampler.endswith(" " + suffix) and len(sampler) > len(suffix) + 1:
            result[sampler_key] = sampler[: -len(suffix) - 1]
            result[schedule_key] = label
            return


# ---------------------------------------------------------------------------------------------- PNG files


def write_png_parameters(image: Any, path: str | Path, infotext: str) -> None:
    """Save a PIL image as PNG with `infotext` in the `parameters` text chunk, atomically.

    PIL writes a tEXt chunk for Latin-1 text and switches to iTXt (UTF-8) otherwise, so Japanese prompts survive.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_TEXT_KEY, infotext)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
    except OSError as exc:
        raise KxlError(f"cannot write the image: {exc}", path=path) from exc


def read_png_parameters(path: str | Path) -> str | None:
    """The `parameters` text of an image file, or None when it has none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            value = image.info.get(PNG_TEXT_KEY)
            if value is None and image.format == "PNG":
                # Text chunks placed after the image data only appear once the pixels have been read.
                image.load()
                value = image.info.get(PNG_TEXT_KEY)
    except FileNotFoundError:
        raise KxlError("image file not found", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise KxlError(f"not a readable image: {exc}", path=path) from exc
    return None if value is None else str(value)
