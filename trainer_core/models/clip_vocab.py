"""The CLIP BPE vocabulary, derived from its merge list (pure functions, no I/O).

CLIP (and OpenCLIP, hence both SDXL text encoders) never shipped a vocab file: the vocab is a deterministic function
of the merge list. Keeping that function here lets the generator script build the shipped tokenizer files and lets
a test re-derive vocab.json from the shipped merges.txt, so the two can never drift apart.
"""

from __future__ import annotations

import json

# CLIP uses the first 49152 - 256 - 2 merges of the 262k-line open_clip BPE file (line 0 is a header).
NUM_MERGES = 49152 - 256 - 2
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
VOCAB_SIZE = 256 + 256 + NUM_MERGES + 2
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode char map, in the order that defines the first 256 vocab ids.

    Printable Latin-1 bytes map to themselves; the rest (controls, space, soft hyphen...) are shifted to 256+n so
    that every byte has a visible, whitespace-free stand-in the BPE can operate on.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shifted)
            shifted += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def merges_from_bpe_text(text: str) -> list[tuple[str, str]]:
    """Take CLIP's merges from the decompressed open_clip `bpe_simple_vocab_16e6.txt` (lines 1..NUM_MERGES)."""
    lines = text.split("\n")
    if len(lines) < NUM_MERGES + 1:
        raise ValueError(f"BPE file has {len(lines)} lines, expected at least {NUM_MERGES + 1}")
    return [_split_merge(line, index) for index, line in enumerate(lines[1 : NUM_MERGES + 1], start=1)]


def merges_from_merges_txt(text: str) -> list[tuple[str, str]]:
    """Parse a Hugging Face `merges.txt` (optional `#version` header, one `a b` pair per line)."""
    lines = text.split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [_split_merge(line, index) for index, line in enumerate(lines, start=1)]


def merges_txt_text(merges: list[tuple[str, str]]) -> str:
    """Serialise merges in the Hugging Face `merges.txt` format read by CLIPTokenizer."""
    return "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n"


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocab: 256 byte chars, the same with `</w>`, every merge joined, then BOS and EOS (insertion order = id)."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars]
    tokens += [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("merge list produces duplicate vocab entries; it is not a CLIP merge list")
    return vocab


def vocab_json_text(vocab: dict[str, int]) -> str:
    """Stable vocab.json text: id order, raw UTF-8 (not \\u escapes), one line plus a trailing newline."""
    return json.dumps(vocab, ensure_ascii=False) + "\n"


def _split_merge(line: str, index: int) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"merge line {index} is not two space-separated symbols: {line!r}")
    return parts[0], parts[1]
