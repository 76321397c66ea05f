"""SDXL conditioning (specs/generation.md §3) on the tiny encoders: emphasis math, pooled, padding, zeros."""

from __future__ import annotations

import pytest
import torch

import trainer_core.hf_quiet  # noqa: F401 - offline env before diffusers
from trainer_core.errors import KxlError
from trainer_core.generate.conditioning import (
    MAX_PROMPT_CHUNKS,
    apply_emphasis,
    encode_pair,
    encode_prompt,
)
from trainer_core.generate.prompt import tokenize_prompt
from trainer_core.models.tiny import build_tiny_components


@pytest.fixture(scope="module")
def comps():
    return build_tiny_components(0)


def _hidden(comps, chunk_ids: list[int]):
    """Penultimate hidden states of both encoders for one chunk, computed independently of the module."""
    ids = torch.tensor([chunk_ids])
    ids2 = ids.clone()
    first_eos = chunk_ids.index(comps.tokenizer.eos_token_id)
    ids2[0, first_eos + 1 :] = 0
    with torch.no_grad():
        h1 = comps.text_encoder(ids, output_hidden_states=True).hidden_states[-2][0]
        out2 = comps.text_encoder_2(ids2, output_hidden_states=True)
    return h1, out2.hidden_states[-2][0], out2.text_embeds[0]


def test_unweighted_prompt_equals_diffusers_encode_prompt(comps):
    pipe = comps.pipeline()
    with torch.no_grad():
        pe, ne, pp, npp = pipe.encode_prompt(
            "a photo of a cat", device="cpu", num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt="ugly, blurry",
        )  # fmt: skip
    for mode in ("Original", "No norm"):
        cond, uncond = encode_pair("a photo of a cat", "ugly, blurry", comps, mode)
        assert torch.equal(cond.embeds, pe) and torch.equal(cond.pooled, pp)
        assert torch.equal(uncond.embeds, ne) and torch.equal(uncond.pooled, npp)
        assert cond.embeds.shape == (1, 77, 32 + 48)


def test_no_norm_multiplies_each_token_and_leaves_pooled_alone(comps):
    text = "(cat:1.5) dog [cow]"
    chunks = tokenize_prompt(text, comps.tokenizer)
    m = torch.tensor(chunks.multipliers[0])
    assert m[1:4].tolist() == pytest.approx([1.5, 1.0, 1 / 1.1])
    h1, h2, pooled = _hidden(comps, chunks.chunks[0])
    cond = encode_prompt(text, comps, "No norm")
    expected = torch.cat([h1 * m[:, None], h2 * m[:, None]], dim=-1)
    torch.testing.assert_close(cond.embeds[0], expected, rtol=0, atol=1e-6)
    assert torch.equal(cond.pooled[0], pooled)  # unweighted, from the plain chunk


def test_original_restores_each_encoders_mean(comps):
    text = "(cat:1.5) dog [cow]"
    chunks = tokenize_prompt(text, comps.tokenizer)
    m = torch.tensor(chunks.multipliers[0])[:, None]
    h1, h2, _ = _hidden(comps, chunks.chunks[0])
    cond = encode_prompt(text, comps, "Original")
    z1, z2 = cond.embeds[0, :, :32], cond.embeds[0, :, 32:]
    torch.testing.assert_close(z1, h1 * m * (h1.mean() / (h1 * m).mean()), rtol=0, atol=1e-5)
    torch.testing.assert_close(z2, h2 * m * (h2.mean() / (h2 * m).mean()), rtol=0, atol=1e-5)
    assert float(z1.mean()) == pytest.approx(float(h1.mean()), rel=1e-5)
    assert float(z2.mean()) == pytest.approx(float(h2.mean()), rel=1e-5)
    # ...and it is really different from "No norm" (the tiny encoders' mean is not preserved by weighting).
    assert not torch.allclose(cond.embeds, encode_prompt(text, comps, "No norm").embeds)


def test_ignore_drops_weights_and_none_keeps_brackets_as_text(comps):
    plain = encode_prompt("cat dog", comps, "No norm").embeds
    assert torch.equal(encode_prompt("(cat:1.8) [dog]", comps, "Ignore").embeds, plain)
    none_mode = encode_prompt("(cat:1.8)", comps, "None")
    assert not torch.equal(none_mode.embeds, encode_prompt("cat", comps, "No norm").embeds)
    assert none_mode.chunks.multipliers[0] == [1.0] * 77


def test_apply_emphasis_modes_on_known_tensor():
    z = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # 1 chunk, 2 tokens, 2 features: mean 2
    w = torch.tensor([[1.0, 2.0]])
    assert apply_emphasis(z, w, "No norm").tolist() == [[[1.0, 3.0], [4.0, 4.0]]]
    # weighted mean = 3 -> scaled by 2/3
    torch.testing.assert_close(
        apply_emphasis(z, w, "Original"), torch.tensor([[[2 / 3, 2.0], [8 / 3, 8 / 3]]])
    )
    assert torch.equal(apply_emphasis(z, w, "Ignore"), z)


def test_pooled_comes_from_chunk_zero_only(comps):
    two = encode_prompt("cat BREAK dog", comps)
    assert two.embeds.shape == (1, 154, 80)
    # Chunks are encoded as one batch, so allow float noise of the batched matmul (not of the method).
    torch.testing.assert_close(two.pooled, encode_prompt("cat", comps).pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(two.embeds[:, :77], encode_prompt("cat", comps).embeds, rtol=0, atol=1e-6)
    assert not torch.allclose(two.pooled, encode_prompt("dog", comps).pooled, atol=1e-3)


def test_empty_negative_is_zeros_with_the_prompts_length(comps):
    cond, uncond = encode_pair("cat BREAK dog", "", comps)
    assert uncond.embeds.shape == (1, 154, 80) and uncond.pooled.shape == (1, 48)
    assert not uncond.embeds.any() and not uncond.pooled.any()
    assert cond.pooled.any()


def test_shorter_side_is_padded_with_encoded_empty_chunks(comps):
    cond, uncond = encode_pair("cat BREAK dog BREAK cow", "lowres", comps)
    assert cond.embeds.shape[1] == uncond.embeds.shape[1] == 231
    empty = encode_prompt("", comps).embeds  # [BOS, EOS, pad...] encoded, not zeros
    assert empty.any()
    assert torch.equal(uncond.embeds[:, 77:154], empty) and torch.equal(uncond.embeds[:, 154:], empty)
    assert torch.equal(uncond.embeds[:, :77], encode_prompt("lowres", comps).embeds)
    # The other way round: a long negative pads the prompt.
    cond2, uncond2 = encode_pair("cat", "a BREAK b", comps)
    assert cond2.embeds.shape == uncond2.embeds.shape == (1, 154, 80)
    assert torch.equal(cond2.embeds[:, 77:], empty)


def test_extra_network_tags_are_stripped(comps):
    assert torch.equal(encode_prompt("<lora:style:0.8>cat", comps).embeds, encode_prompt("cat", comps).embeds)


def test_prompt_over_the_limit_is_a_clear_error(comps):
    text = " BREAK ".join(["cat"] * (MAX_PROMPT_CHUNKS + 1))
    with pytest.raises(KxlError, match="limit is 900 tokens"):
        encode_prompt(text, comps)
