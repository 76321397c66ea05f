"""SDXL text conditioning with A1111 semantics (specs/generation.md §3).

Per 77-token chunk, both CLIP encoders read the same ids (TE2 with pad id 0 after the first EOS); the penultimate
hidden states of both are weighted per token (emphasis) and concatenated on the feature axis; chunks are
concatenated on the token axis. The pooled vector is TE2's projection of chunk 0, never weighted. An empty
negative prompt is all zeros (A1111 force_zero_embeddings), and the shorter of cond/uncond is padded with
encoded empty chunks so diffusers can batch them for CFG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import KxlError
from .prompt import (
    DEFAULT_COMMA_BACKTRACK,
    PromptChunks,
    check_emphasis,
    strip_extra_networks,
    tokenize_prompt,
)

DEFAULT_EMPHASIS = "No norm"
"""The Kohaku XL card advises "No norm" with emphasis weights 1.5-2.5, so it is our default (A1111's is Original)."""

MAX_PROMPT_CHUNKS = 12
"""900 tokens. Longer prompts are almost certainly a paste error and would only burn memory in cross-attention."""


@dataclass
class Conditioning:
    """One prompt, encoded: `embeds` (1, 77*k, D1+D2) and `pooled` (1, P), on the text encoders' device."""

    embeds: Any
    pooled: Any
    chunks: PromptChunks | None  # None for the all-zero empty negative

    @property
    def n_chunks(self) -> int:
        return self.embeds.shape[1] // 77


def encode_prompt(
    text: str,
    components: Any,
    emphasis: str = DEFAULT_EMPHASIS,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
    *,
    zero_if_empty: bool = False,
    min_chunks: int = 1,
) -> Conditioning:
    """Encode one prompt with `components` (anything with tokenizer, text_encoder, text_encoder_2).

    `<lora:...>` tags are removed first. With `zero_if_empty` an empty text gives zeros (the negative-prompt
    rule). `min_chunks` pads with empty chunks ([BOS, EOS, pad...], weights 1) to reach that length.
    """
    check_emphasis(emphasis)
    text, _ = strip_extra_networks(text)
    te1, te2 = components.text_encoder, components.text_encoder_2
    if zero_if_empty and text == "":
        return zero_conditioning(components, max(1, min_chunks))
    chunks = tokenize_prompt(text, components.tokenizer, comma_backtrack, emphasis)
    if len(chunks.chunks) > MAX_PROMPT_CHUNKS:
        raise KxlError(
            f"the prompt is {chunks.token_count} tokens ({len(chunks.chunks)} chunks of 75); the limit is "
            f"{MAX_PROMPT_CHUNKS * 75} tokens",
            hint="shorten the prompt or remove duplicated tags",
        )
    chunks = chunks.padded_to(min_chunks)
    embeds, pooled = encode_chunks(chunks, te1, te2, emphasis, pad_id_2=_pad_id(components.tokenizer_2))
    return Conditioning(embeds, pooled, chunks)


def encode_pair(
    prompt: str,
    negative: str,
    components: Any,
    emphasis: str = DEFAULT_EMPHASIS,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond) with equal chunk counts; an empty negative is zeros of the prompt's length."""
    cond = encode_prompt(prompt, components, emphasis, comma_backtrack)
    uncond = encode_prompt(
        negative, components, emphasis, comma_backtrack, zero_if_empty=True, min_chunks=cond.n_chunks
    )
    if uncond.n_chunks > cond.n_chunks:
        cond = encode_prompt(prompt, components, emphasis, comma_backtrack, min_chunks=uncond.n_chunks)
    return cond, uncond


def zero_conditioning(components: Any, n_chunks: int = 1) -> Conditioning:
    """All-zero embeds and pooled (zeros of any length are equivalent: SDXL's to_k/to_v have no bias)."""
    import torch

    te1, te2 = components.text_encoder, components.text_encoder_2
    width = te1.config.hidden_size + te2.config.hidden_size
    device, dtype = _device_dtype(te2)
    embeds = torch.zeros(1, 77 * n_chunks, width, device=device, dtype=dtype)
    pooled = torch.zeros(1, te2.config.projection_dim, device=device, dtype=dtype)
    return Conditioning(embeds, pooled, None)


def encode_chunks(
    chunks: PromptChunks, te1: Any, te2: Any, emphasis: str, pad_id_2: int = 0
) -> tuple[Any, Any]:
    """(embeds (1, 77k, D1+D2), pooled (1, P)) for already tokenized chunks."""
    import torch

    device, _ = _device_dtype(te1)
    ids1 = torch.tensor(chunks.chunks, dtype=torch.long, device=device)
    ids2 = ids1.clone()
    for row in ids2:
        # TE2 (OpenCLIP bigG in A1111) pads with id 0 after the first EOS, like diffusers' tokenizer_2.
        first_eos = int((row == chunks.eos_id).nonzero()[0])
        row[first_eos + 1 :] = pad_id_2
    weights = torch.tensor(chunks.multipliers, dtype=torch.float32, device=device)
    with torch.no_grad():
        out1 = te1(ids1, output_hidden_states=True)
        out2 = te2(ids2.to(_device_dtype(te2)[0]), output_hidden_states=True)
        z1 = apply_emphasis(out1.hidden_states[-2], weights, emphasis)
        z2 = apply_emphasis(out2.hidden_states[-2], weights.to(z1.device), emphasis)
        embeds = torch.cat([z1, z2.to(z1.device)], dim=-1)  # (k, 77, D1+D2)
        embeds = embeds.reshape(1, -1, embeds.shape[-1])
        pooled = out2.text_embeds[0:1]
    return embeds, pooled.to(embeds.device)


def apply_emphasis(z: Any, weights: Any, emphasis: str) -> Any:
    """Weight hidden states `z` (k, 77, D) by per-token `weights` (k, 77) under an A1111 emphasis mode.

    "Original" rescales each chunk so its mean over all tokens and features is unchanged (A1111's
    EmphasisOriginal, per encoder, per chunk); "No norm" multiplies only; "Ignore"/"None" leave z untouched.
    """
    if emphasis in ("Ignore", "None"):
        return z
    zf = z.float()
    weighted = zf * weights[..., None].to(zf.device)
    if emphasis == "Original":
        original_mean = zf.mean(dim=(1, 2), keepdim=True)
        new_mean = weighted.mean(dim=(1, 2), keepdim=True)
        weighted = weighted * (original_mean / new_mean)
    return weighted.to(z.dtype)


def _pad_id(tokenizer_2: Any) -> int:
    pad = getattr(tokenizer_2, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _device_dtype(module: Any) -> tuple[Any, Any]:
    param = next(module.parameters())
    return param.device, param.dtype
