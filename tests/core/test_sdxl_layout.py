"""The SDXL key layout on the full-size architecture, built on the meta device (no 7 GB allocation)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer_core.models.architectures import component_shapes, fingerprint, layout_for, sgm_shapes
from trainer_core.models.sdxl_layout import (
    EMBEDDING_KEYS,
    TE1_PREFIX,
    TE2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    unet_module_to_sgm,
)

ARCH = "sdxl-base"


@pytest.fixture(scope="module")
def table():
    return sgm_shapes(ARCH)


def test_full_sdxl_has_2514_single_file_tensors_with_the_real_parameter_count(table):
    assert len(table) == 2514
    assert sum(math.prod(s) for s in table.values()) == 3_468_837_868  # specs/training.md §6
    per_prefix = {
        p: sum(k.startswith(p) for k in table) for p in (UNET_PREFIX, VAE_PREFIX, TE1_PREFIX, TE2_PREFIX)
    }
    assert per_prefix == {UNET_PREFIX: 1680, VAE_PREFIX: 248, TE1_PREFIX: 196, TE2_PREFIX: 390}


@pytest.mark.parametrize(
    "key, shape",
    [
        (UNET_PREFIX + "input_blocks.0.0.weight", (320, 4, 3, 3)),
        (UNET_PREFIX + "input_blocks.3.0.op.weight", (320, 320, 3, 3)),
        (UNET_PREFIX + "input_blocks.6.0.op.weight", (640, 640, 3, 3)),
        (UNET_PREFIX + "input_blocks.4.0.skip_connection.weight", (640, 320, 1, 1)),
        (UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", (640, 2048)),
        (UNET_PREFIX + "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight", (10240, 1280)),
        (UNET_PREFIX + "middle_block.1.transformer_blocks.9.attn1.to_out.0.bias", (1280,)),
        (UNET_PREFIX + "middle_block.2.emb_layers.1.weight", (1280, 1280)),
        (UNET_PREFIX + "output_blocks.2.2.conv.weight", (1280, 1280, 3, 3)),
        (UNET_PREFIX + "output_blocks.5.2.conv.weight", (640, 640, 3, 3)),
        (UNET_PREFIX + "output_blocks.8.0.out_layers.3.weight", (320, 320, 3, 3)),
        (UNET_PREFIX + "label_emb.0.0.weight", (1280, 2816)),
        (UNET_PREFIX + "time_embed.2.weight", (1280, 1280)),
        (UNET_PREFIX + "out.2.weight", (4, 320, 3, 3)),
        (VAE_PREFIX + "encoder.mid.attn_1.q.weight", (512, 512, 1, 1)),
        (VAE_PREFIX + "decoder.up.3.block.0.conv1.weight", (512, 512, 3, 3)),
        (VAE_PREFIX + "decoder.up.0.block.0.nin_shortcut.weight", (128, 256, 1, 1)),
        (VAE_PREFIX + "decoder.up.1.upsample.conv.weight", (256, 256, 3, 3)),
        (VAE_PREFIX + "quant_conv.weight", (8, 8, 1, 1)),
        (TE1_PREFIX + "text_model.encoder.layers.11.mlp.fc2.weight", (768, 3072)),
        (TE1_PREFIX + "text_model.final_layer_norm.weight", (768,)),
        (TE2_PREFIX + "transformer.resblocks.31.attn.in_proj_weight", (3840, 1280)),
        (TE2_PREFIX + "transformer.resblocks.0.attn.in_proj_bias", (3840,)),
        (TE2_PREFIX + "transformer.resblocks.5.mlp.c_fc.weight", (5120, 1280)),
        (TE2_PREFIX + "text_projection", (1280, 1280)),
        (TE2_PREFIX + "logit_scale", ()),
        (TE2_PREFIX + "ln_final.bias", (1280,)),
    ],
)
def test_known_single_file_keys_have_sdxl_shapes(table, key, shape):
    assert table[key] == shape


def test_reverted_embedding_keys_exist_with_card_shapes(table):
    assert table[EMBEDDING_KEYS["te1_token"]] == (49408, 768)
    assert table[EMBEDDING_KEYS["te1_position"]] == (77, 768)
    assert table[EMBEDDING_KEYS["te2_token"]] == (49408, 1280)
    assert table[EMBEDDING_KEYS["te2_position"]] == (77, 1280)


def test_every_tensor_round_trips_single_file_to_diffusers_and_back_on_meta(table):
    layout = layout_for(ARCH)
    sgm = {k: torch.empty(s, device="meta") for k, s in table.items()}
    comps, extras, unexpected = layout.from_sgm(sgm)
    assert unexpected == [] and list(extras) == [TE2_PREFIX + "logit_scale"]
    diffusers_shapes = component_shapes(ARCH)
    for name, shapes in diffusers_shapes.items():
        got = {
            k.removeprefix("text_model.") if name == "text_encoder" else k: tuple(v.shape)
            for k, v in comps[name].items()
        }
        want = {k.removeprefix("text_model.") if name == "text_encoder" else k: v for k, v in shapes.items()}
        assert got == want, name
    back = layout.to_sgm(comps, extras)
    assert {k: tuple(v.shape) for k, v in back.items()} == table


def test_te2_fuse_and_transpose_move_the_right_values():
    # Values, not just shapes: q/k/v stack in that order and text_projection is the transpose.
    layout = layout_for("kxl-tiny")
    shapes = component_shapes("kxl-tiny")["text_encoder_2"]
    sd = {
        k: torch.arange(math.prod(s), dtype=torch.float32).reshape(s) + i
        for i, (k, s) in enumerate(shapes.items())
    }
    other = {
        c: {k: torch.zeros(s) for k, s in component_shapes("kxl-tiny")[c].items()}
        for c in ("unet", "vae", "text_encoder")
    }
    out = layout.to_sgm({**other, "text_encoder_2": sd})
    base = "text_model.encoder.layers.1.self_attn."
    fused = out[TE2_PREFIX + "transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(
        fused, torch.cat([sd[base + "q_proj.weight"], sd[base + "k_proj.weight"], sd[base + "v_proj.weight"]])
    )
    assert torch.equal(out[TE2_PREFIX + "text_projection"], sd["text_projection.weight"].t())


def test_lokr_module_names_follow_kohya_sgm_paths():
    up_attn = {0, 1}
    assert unet_module_to_sgm("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 2, up_attn) == (
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    )
    assert unet_module_to_sgm("up_blocks.1.upsamplers.0.conv", 2, up_attn) == "output_blocks.5.2.conv"
    assert (
        unet_module_to_sgm("up_blocks.2.resnets.2.conv_shortcut", 2, up_attn)
        == "output_blocks.8.0.skip_connection"
    )
    assert (
        unet_module_to_sgm("mid_block.resnets.1.time_emb_proj", 2, up_attn) == "middle_block.2.emb_layers.1"
    )
    assert unet_module_to_sgm("add_embedding.linear_2", 2, up_attn) == "label_emb.0.2"


def test_fingerprint_classifies_without_torch_tensors(table):
    assert fingerprint(table).arch == "sdxl-base"
    assert fingerprint(sgm_shapes("kxl-tiny")).arch == "kxl-tiny"
    assert fingerprint({"lora_unet_input_blocks_4_1_proj_in.lokr_w1": (4, 4)}).kind == "lokr"
    sd1 = fingerprint(
        {"cond_stage_model.transformer.x": (1,), UNET_PREFIX + "input_blocks.0.0.weight": (320, 4, 3, 3)}
    )
    assert sd1.kind == "sd1"
    partial = fingerprint({k: v for k, v in table.items() if not k.startswith(VAE_PREFIX)})
    assert partial.kind == "unknown" and "VAE" in partial.reason
