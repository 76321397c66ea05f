"""A1111 (stable-diffusion-webui v1.10) prompt syntax: attention weights, BREAK, extra-network tags, 75-token chunks.

Pure functions, no torch. The rules and test vectors are in specs/generation.md §1-§2; the goal is that a prompt
pasted from A1111 produces the same token ids and per-token multipliers, chunk for chunk, so the encoder (§3) can
reproduce A1111's conditioning.

Prompt editing and alternation (`[a:b:when]`, `[a|b]`) are resolved before this stage, per model call, by
`prompt_schedule.py`; the texts arriving here no longer hold them. Composable diffusion (`AND`) is not supported:
it stays literal text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import KxlError

CHUNK_LENGTH = 75
"""Content tokens per chunk; each chunk is BOS + 75 + EOS = 77 ids, CLIP's context length."""

DEFAULT_COMMA_BACKTRACK = 20
"""A1111 "Prompt word wrap length limit" (setting comma_padding_backtrack; 0 disables, slider range 0..74)."""

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
"""A1111 "Emphasis mode" values. Parsing differs only for "None" (no syntax) and "Ignore" (weights dropped)."""

BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1.0
"""A fragment equal to ("BREAK", -1.0) forces a new chunk. Any other weight (e.g. -1.1 from `(a BREAK b)`)
makes it ordinary text — an A1111 quirk that we replicate on purpose."""

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1  # multiplied, never divided: A1111's floats come from `w * (1 / 1.1)`

# One alternative per syntax element, tried left to right (first match wins), exactly as A1111 scans.
# `\d` (not [0-9]) because A1111 uses it too and Python's float() accepts any Unicode decimal digit,
# so "(a:１.５)" typed with full-width digits is a valid weight there.
_ATTENTION_RE = re.compile(
    r"""
    \\[()\[\]\\]              # escaped bracket or backslash: the literal character
    | \\                      # any other backslash: dropped
    | \(                      # open emphasis
    | \[                      # open de-emphasis
    | :\s*([+-]?[.\d]+)\s*\)  # explicit weight, closes the innermost "("
    | \)                      # close emphasis
    | \]                      # close de-emphasis
    | [^\\()\[\]:]+           # plain text
    | :                       # a colon that is not a weight
    """,
    re.VERBOSE,
)

_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")

# `<kind:args>`: A1111 removes these before any other parsing (the LoRA / hypernetwork tags).
_EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")


class PromptSyntaxError(KxlError):
    """The prompt cannot be parsed (A1111 would fail the whole generation on the same text)."""

    def __init__(self, message: str, *, position: int | None, value: str):
        self.position = position  # 0-based index into the parsed text; None when not about a prompt position
        self.value = value
        super().__init__(message)


# --------------------------------------------------------------------------------------------------- parsing


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs with A1111's attention syntax.

    `(x)` multiplies by 1.1, `[x]` by 1/1.1, `(x:w)` by w; nesting multiplies; unclosed brackets are closed at
    the end; `\\(` etc. are literal. Plain text is split on the word `BREAK`, leaving ("BREAK", -1.0) markers.
    Adjacent fragments with exactly equal weights are merged (so they are tokenized together).

    Raises PromptSyntaxError for a weight that is not a number, e.g. `(a:1.2.3)`.
    """
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for match in _ATTENTION_RE.finditer(text):
        token = match.group(0)
        weight_text = match.group(1)
        if token.startswith("\\"):
            # A lone backslash yields an empty fragment; it is harmless and kept for exact parity.
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight_text is not None and round_open:
            try:
                weight = float(weight_text)
            except ValueError:
                position = match.start(1)
                raise PromptSyntaxError(
                    f"invalid emphasis weight {weight_text!r} at character {position + 1} of the prompt "
                    f"(near {_context(text, match.start(), match.end())!r}); write a number such as 1.2, "
                    "or escape the brackets as \\( \\) to keep them as text",
                    position=position,
                    value=weight_text,
                ) from None
            multiply_from(round_open.pop(), weight)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            # Plain text, including an unmatched ")" / "]" / weight: split on BREAK; every part (even empty)
            # is kept so the markers' neighbours stay distinct, as in A1111.
            for index, part in enumerate(_BREAK_RE.split(token)):
                if index > 0:
                    res.append([BREAK_TEXT, BREAK_WEIGHT])
                res.append([part, 1.0])

    # Unbalanced brackets act as if closed at the end: all "(" first, then all "[" (order fixes the float bits).
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    merged: list[list[Any]] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(str(fragment), float(weight)) for fragment, weight in merged]


def parse_prompt(text: str, emphasis: str = "Original") -> list[tuple[str, float]]:
    """Fragments for one prompt under an A1111 emphasis mode.

    "Original" / "No norm" / "Ignore" parse the syntax (the modes differ only in how the encoder applies the
    weights; "Ignore" keeps BREAK but drops every weight to 1.0 in `tokenize_prompt`). "None" does no parsing at
    all: the whole text is one fragment of weight 1.0 and BREAK is ordinary text.
    """
    check_emphasis(emphasis)
    if emphasis == "None":
        return [(text, 1.0)]
    return parse_prompt_attention(text)


def check_emphasis(emphasis: str) -> None:
    if emphasis not in EMPHASIS_MODES:
        raise KxlError(f"unknown emphasis mode {emphasis!r}; choose one of {', '.join(EMPHASIS_MODES)}")


def _context(text: str, start: int, end: int) -> str:
    """A short excerpt ending at the bad weight, so the message is useful for a 300-character prompt."""
    return text[max(0, start - 24) : end]


# ------------------------------------------------------------------------------------------ extra networks


def strip_extra_networks(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Remove `<kind:name[:args]>` tags (e.g. `<lora:mystyle:0.8>`) and return them as (kind, name, args).

    `args` is everything after the name's colon ("0.8", "0.8:0.5", or "" for `<lora:mystyle>`). The surrounding
    text (spaces, commas) is left exactly as it was, like A1111, so chunking matches.
    """
    found: list[tuple[str, str, str]] = []

    def take(match: re.Match[str]) -> str:
        name, _, args = match.group(2).partition(":")
        found.append((match.group(1), name, args))
        return ""

    return _EXTRA_NETWORK_RE.sub(take, text), found


def extra_network_multiplier(args: str, *, tag: str = "") -> float:
    """The strength of an extra-network tag: its first positional argument, 1.0 when absent.

    Named arguments (`te=0.5`, `unet=...`) are skipped. A value that is not a number raises PromptSyntaxError.
    """
    for item in args.split(":") if args else []:
        if "=" in item:
            continue
        try:
            return float(item)
        except ValueError:
            label = f"<{tag}>" if tag else "extra-network tag"
            raise PromptSyntaxError(
                f"{label}: strength {item!r} is not a number (write e.g. <lora:name:0.8>)",
                position=None,
                value=item,
            ) from None
    return 1.0


# ---------------------------------------------------------------------------------------------- chunking


def token_counter_text(token_count: int) -> str:
    """The UI counter "used/target", target = the next multiple of 75 (A1111's prompt token counter)."""
    return f"{token_count}/{target_token_count(token_count)}"


def target_token_count(token_count: int) -> int:
    return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


@dataclass
class PromptChunks:
    """One prompt as CLIP inputs: k chunks of 77 ids (BOS + 75 + EOS, EOS padding) with a weight per id."""

    chunks: list[list[int]]
    multipliers: list[list[float]]
    token_count: int
    """Real content tokens, counting every chunk that a BREAK or overflow closed as a full 75."""
    bos_id: int
    eos_id: int

    @property
    def target(self) -> int:
        return target_token_count(self.token_count)

    def counter_text(self) -> str:
        """e.g. "76/150" for the prompt box."""
        return token_counter_text(self.token_count)

    def padded_to(self, n_chunks: int) -> PromptChunks:
        """A copy with empty chunks ([BOS, EOS x 76], weights 1) appended up to `n_chunks`.

        Used to give cond and uncond the same length (specs §3); an empty chunk equals a BREAK-only chunk.
        """
        extra = max(0, n_chunks - len(self.chunks))
        empty = [self.bos_id] + [self.eos_id] * (CHUNK_LENGTH + 1)
        return PromptChunks(
            chunks=[list(c) for c in self.chunks] + [list(empty) for _ in range(extra)],
            multipliers=[list(m) for m in self.multipliers]
            + [[1.0] * (CHUNK_LENGTH + 2) for _ in range(extra)],
            token_count=self.token_count,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
        )


def tokenize_prompt(
    text: str,
    tokenizer: Any,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
    emphasis: str = "Original",
) -> PromptChunks:
    """Parse `text` and pack its tokens into 75-token chunks exactly like A1111's `tokenize_line`.

    `tokenizer` is a Hugging Face CLIP tokenizer; BOS, EOS and the `,</w>` comma id are read from it. Each
    fragment is tokenized on its own (fragment borders are BPE borders). A chunk that overflows is cut after its
    last comma when that comma is within `comma_backtrack` tokens of the end (0 disables). Call
    `strip_extra_networks` first: `<lora:...>` tags are not removed here.
    """
    if not 0 <= comma_backtrack < CHUNK_LENGTH:
        raise KxlError(
            f"prompt word wrap length limit must be between 0 and {CHUNK_LENGTH - 1}, got {comma_backtrack}"
        )
    fragments = parse_prompt(text, emphasis)
    if emphasis == "Ignore":
        fragments = [(t, w if _is_break(t, w) else 1.0) for t, w in fragments]
    bos_id, eos_id, comma_id = _special_ids(tokenizer)
    token_lists = _tokenize_fragments([t for t, w in fragments if not _is_break(t, w)], tokenizer)
    return _pack_chunks(fragments, token_lists, bos_id, eos_id, comma_id, comma_backtrack)


def prompt_token_counter(
    text: str, tokenizer: Any, comma_backtrack: int = DEFAULT_COMMA_BACKTRACK, emphasis: str = "Original"
) -> str:
    """Counter text for a raw prompt box, extra-network tags removed first (they cost no tokens in A1111)."""
    stripped, _ = strip_extra_networks(text)
    return tokenize_prompt(stripped, tokenizer, comma_backtrack, emphasis).counter_text()


def _is_break(fragment: str, weight: float) -> bool:
    return fragment == BREAK_TEXT and weight == BREAK_WEIGHT


def _special_ids(tokenizer: Any) -> tuple[int, int, int | None]:
    bos_id = tokenizer.bos_token_id
    eos_id = tokenizer.eos_token_id
    if bos_id is None or eos_id is None:
        raise KxlError("the text tokenizer has no BOS/EOS token; it is not a CLIP tokenizer")
    comma_id = tokenizer.convert_tokens_to_ids(",</w>")
    # A vocabulary without ",</w>" maps it to the unknown token; then comma backtracking simply never fires.
    if comma_id is None or comma_id == tokenizer.unk_token_id:
        comma_id = None
    return int(bos_id), int(eos_id), comma_id


def _tokenize_fragments(texts: list[str], tokenizer: Any) -> list[list[int]]:
    if not texts:
        return []
    # One batched call (fast tokenizer) instead of one call per fragment; results are identical.
    # verbose=False: a long prompt is expected to exceed 77 tokens; that is what chunking is for.
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _pack_chunks(
    fragments: Sequence[tuple[str, float]],
    token_lists: list[list[int]],
    bos_id: int,
    eos_id: int,
    comma_id: int | None,
    comma_backtrack: int,
) -> PromptChunks:
    chunks: list[list[int]] = []
    multipliers: list[list[float]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1
    token_count = 0

    def finish(is_last: bool = False) -> None:
        nonlocal tokens, weights, last_comma, token_count
        token_count += len(tokens) if is_last else CHUNK_LENGTH
        pad = CHUNK_LENGTH - len(tokens)
        chunks.append([bos_id, *tokens, *([eos_id] * pad), eos_id])
        multipliers.append([1.0, *weights, *([1.0] * pad), 1.0])
        tokens, weights = [], []
        last_comma = -1

    lists = iter(token_lists)
    for fragment, weight in fragments:
        if _is_break(fragment, weight):
            finish()
            continue
        for token in next(lists):
            if token == comma_id:
                last_comma = len(tokens)
            elif (
                comma_backtrack != 0
                and len(tokens) == CHUNK_LENGTH
                and last_comma != -1
                and CHUNK_LENGTH - last_comma <= comma_backtrack
            ):
                # Word wrap: the words after the last comma move to the next chunk so a tag is not split.
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                finish()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_LENGTH:
                finish()
            tokens.append(token)
            weights.append(weight)

    if tokens or not chunks:
        finish(is_last=True)
    return PromptChunks(chunks, multipliers, token_count, bos_id, eos_id)
