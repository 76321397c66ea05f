"""Caption -> SDXL conditioning at train time, as sd-scripts does it (specs/training.md §2.2), with gradients.

This is the trainer's tokenisation, deliberately not A1111's (`generate.prompt`): sd-scripts tokenises the whole
caption once, truncated at `max_token_length + 2` ids, and cuts it into fixed 75-token windows (no emphasis, no
comma word-wrap, no BREAK). A LoKr trained this way is what the released files were; inference then uses A1111's
rules, as users of sd-webui do.
"""

from __future__ import annotations

from typing import Any

CLIP_LENGTH = 77


def tokenize_captions(captions: list[str], tokenizer: Any, max_token_length: int, pad_id: int | None = None):
    """(B, n_chunks, 77) int64 ids: BOS + 75 tokens + last id per chunk, n_chunks = max_token_length // 75.

    `pad_id` overrides the tokenizer's padding id (TE2 pads with 0, which the SDXL tokenizer_2 already uses); when
    it differs from EOS, sd-scripts' two fixes apply per chunk: a chunk whose second-to-last id is neither EOS nor
    PAD ends with EOS, and a chunk that starts BOS, PAD gets EOS at position 1.
    """
    import torch

    n_chunks = max_token_length // (CLIP_LENGTH - 2)
    total = max_token_length + 2
    ids = tokenizer(captions, max_length=total, padding="max_length", truncation=True, return_tensors="pt",
                    verbose=False)["input_ids"]  # fmt: skip
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if pad_id is None else pad_id
    if pad != tokenizer.pad_token_id:
        ids = torch.where(ids == tokenizer.pad_token_id, torch.full_like(ids, pad), ids)
    if n_chunks == 1:
        return ids.unsqueeze(1)
    chunks = []
    for i in range(n_chunks):
        start = 1 + i * (CLIP_LENGTH - 2)
        chunk = torch.cat([ids[:, :1], ids[:, start : start + CLIP_LENGTH - 2], ids[:, -1:]], dim=1)
        if pad != eos:
            open_end = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[:, -1] = torch.where(open_end, torch.full_like(chunk[:, -1], eos), chunk[:, -1])
            empty = chunk[:, 1] == pad
            chunk[:, 1] = torch.where(empty, torch.full_like(chunk[:, 1], eos), chunk[:, 1])
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def _stitch(hidden, n_chunks: int):
    """(B*n, 77, C) -> (B, 75n + 2, C): position 0 of chunk 0, positions 1..75 of every chunk, last of the last."""
    import torch

    b = hidden.shape[0] // n_chunks
    h = hidden.reshape(b, n_chunks, CLIP_LENGTH, hidden.shape[-1])
    if n_chunks == 1:
        return h[:, 0]
    middle = h[:, :, 1:-1].reshape(b, n_chunks * (CLIP_LENGTH - 2), hidden.shape[-1])
    return torch.cat([h[:, 0, :1], middle, h[:, -1, -1:]], dim=1)


def encode_tokens(ids1, ids2, text_encoder: Any, text_encoder_2: Any):
    """(context (B, 75n+2, C1+C2), pooled (B, P)) from chunked ids; differentiable through both encoders.

    Penultimate hidden states without final LN from both encoders; pooled = TE2 projection at the first EOS of
    chunk 0 (what `CLIPTextModelWithProjection.text_embeds` computes).
    """
    import torch

    b, n = ids1.shape[:2]
    out1 = text_encoder(ids1.reshape(b * n, -1), output_hidden_states=True)
    out2 = text_encoder_2(ids2.reshape(b * n, -1), output_hidden_states=True)
    h1 = _stitch(out1.hidden_states[-2], n)
    h2 = _stitch(out2.hidden_states[-2], n)
    pooled = out2.text_embeds.reshape(b, n, -1)[:, 0]
    return torch.cat([h1, h2.to(h1.dtype)], dim=-1), pooled
