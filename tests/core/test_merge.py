"""Streaming merge on tiny checkpoints, checked tensor by tensor against independent computations."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer_core.errors import Cancelled, CheckpointError, KxlError
from trainer_core.merge.blocks import BLOCKS, block_of
from trainer_core.merge.engine import plan_merge, run_merge
from trainer_core.merge.recipe import MergeRecipe, kohaku_xl_delta_recipe
from trainer_core.merge.sources import metadata_of, recipe_from_metadata
from trainer_core.models.loading import load_sdxl, save_diffusers_folder
from trainer_core.models.sdxl_layout import EMBEDDING_KEYS, TE2_PREFIX, UNET_PREFIX
from trainer_core.models.tiny import write_demo_checkpoints
from trainer_core.progress import CancelToken, Progress

EMB = set(EMBEDDING_KEYS.values())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return write_demo_checkpoints(tmp_path_factory.mktemp("merge-in"), seed=0)


@pytest.fixture(scope="module")
def tensors(ckpts):
    return {role: load_file(p) for role, p in ckpts.items()}


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16)


def test_kohaku_preset_is_half_gamma_half_beta_with_original_embeddings(ckpts, tensors, tmp_path):
    out = run_merge(
        kohaku_xl_delta_recipe(ckpts["gamma"], ckpts["beta"], ckpts["original"]), tmp_path / "d.safetensors"
    )
    merged = load_file(out.path)
    g, b, o = tensors["gamma"], tensors["beta"], tensors["original"]
    assert merged.keys() == g.keys()
    for key, value in merged.items():
        if key in EMB:
            assert torch.equal(value, o[key]), key  # bit for bit, as the card says
        else:
            assert torch.equal(value, _fp16(0.5 * g[key].float() + 0.5 * b[key].float())), key
    assert out.plan.reverted == [
        EMBEDDING_KEYS[n] for n in ("te1_token", "te1_position", "te2_token", "te2_position")
    ]
    recipe = recipe_from_metadata(metadata_of(out.path))
    assert recipe["operation"] == "weighted_sum" and recipe["weights"] == [0.5, 0.5]
    assert [i["name"] for i in recipe["inputs"]] == ["kxl-tiny-gamma-rev2", "kxl-tiny-beta7"]
    from trainer_core.hashing import full_sha256

    assert recipe["inputs"][0]["sha256"] == full_sha256(ckpts["gamma"])[:10]
    assert recipe["original"]["sha256"] == full_sha256(ckpts["original"])[:10]
    # The result loads as an SDXL checkpoint (same path sd-webui/ComfyUI users take).
    assert load_sdxl(out.path).arch == "kxl-tiny"


def test_diffusers_folder_inputs_merge_identically(ckpts, tmp_path):
    folder = save_diffusers_folder(load_sdxl(ckpts["beta"]), tmp_path / "beta-diffusers")
    orig_folder = save_diffusers_folder(load_sdxl(ckpts["original"]), tmp_path / "orig-diffusers")
    a = run_merge(
        kohaku_xl_delta_recipe(ckpts["gamma"], ckpts["beta"], ckpts["original"]), tmp_path / "a.safetensors"
    )
    b = run_merge(kohaku_xl_delta_recipe(ckpts["gamma"], folder, orig_folder), tmp_path / "b.safetensors")
    ta, tb = load_file(a.path), load_file(b.path)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_add_difference(ckpts, tensors, tmp_path):
    recipe = MergeRecipe("add_difference", [str(ckpts["original"]), str(ckpts["gamma"]), str(ckpts["beta"])],
                         weights=[0.7], dtype="fp32")  # fmt: skip
    merged = load_file(run_merge(recipe, tmp_path / "ad.safetensors").path)
    o, g, b = tensors["original"], tensors["gamma"], tensors["beta"]
    for key, value in merged.items():
        expected = o[key].float() + 0.7 * (g[key].float() - b[key].float())
        assert value.dtype == torch.float32
        assert torch.allclose(value, expected, atol=1e-6), key


def test_block_weights_override_per_unet_block(ckpts, tensors, tmp_path):
    recipe = MergeRecipe("weighted_sum", [str(ckpts["gamma"]), str(ckpts["beta"])], weights=[0.5, 0.5],
                         block_weights={"IN04": [1.0, 0.0], "BASE": [0.0, 1.0]})  # fmt: skip
    merged = load_file(run_merge(recipe, tmp_path / "bw.safetensors").path)
    g, b = tensors["gamma"], tensors["beta"]
    in04 = UNET_PREFIX + "input_blocks.4.1.proj_in.weight"
    mid = UNET_PREFIX + "middle_block.1.proj_in.weight"
    te = TE2_PREFIX + "ln_final.weight"
    assert torch.equal(merged[in04], g[in04])
    assert torch.equal(merged[te], b[te])
    assert torch.equal(merged[mid], _fp16(0.5 * g[mid].float() + 0.5 * b[mid].float()))


def test_block_names_cover_the_sdxl_unet():
    assert len(BLOCKS) == 20
    assert block_of(UNET_PREFIX + "input_blocks.0.0.weight") == "IN00"
    assert block_of(UNET_PREFIX + "output_blocks.8.0.skip_connection.weight") == "OUT08"
    assert block_of(UNET_PREFIX + "middle_block.2.in_layers.0.weight") == "MID"
    assert block_of(UNET_PREFIX + "time_embed.0.weight") == "BASE"
    assert block_of("first_stage_model.decoder.conv_in.weight") == "BASE"


def test_weights_not_summing_to_one_warn(ckpts, tmp_path):
    recipe = MergeRecipe("weighted_sum", [str(ckpts["gamma"]), str(ckpts["beta"])], weights=[0.6, 0.6])
    result = run_merge(recipe, tmp_path / "w.safetensors")
    assert any("sum to 1.2" in w for w in result.warnings)


# -- LoKr bake ------------------------------------------------------------------------------------------------

Module = namedtuple("Module", "name sgm_key tensors")


def _handmade_lokr(tmp_path: Path, tensors) -> tuple[Path, list[Module]]:
    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    o = tensors["original"]
    q = UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"  # (64, 64) linear
    conv = UNET_PREFIX + "input_blocks.1.0.in_layers.2.weight"  # (32, 32, 3, 3)
    conv2 = UNET_PREFIX + "output_blocks.0.0.out_layers.3.weight"  # (64, 64, 3, 3)
    assert tuple(o[q].shape) == (64, 64) and tuple(o[conv].shape) == (32, 32, 3, 3)
    modules = [
        # full w1 / full w2: scale 1 whatever alpha says (the card's full-matrix case)
        Module("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", q,
               {"lokr_w1": r(4, 4), "lokr_w2": r(16, 16), "alpha": torch.tensor(10000.0)}),
        # low-rank w2 on a conv, no tucker: scale alpha / rank = 2 / 4
        Module("lora_unet_input_blocks_1_0_in_layers_2", conv,
               {"lokr_w1": r(4, 4), "lokr_w2_a": r(8, 4), "lokr_w2_b": r(4, 8 * 9), "alpha": torch.tensor(2.0)}),
        # tucker conv
        Module("lora_unet_output_blocks_0_0_out_layers_3", conv2,
               {"lokr_w1": r(8, 8), "lokr_w2_a": r(3, 8), "lokr_w2_b": r(3, 8), "lokr_t2": r(3, 3, 3, 3),
                "alpha": torch.tensor(3.0)}),
        # TE2 k_proj: patches the middle third of the fused in_proj_weight
        Module("lora_te2_text_model_encoder_layers_1_self_attn_k_proj",
               TE2_PREFIX + "transformer.resblocks.1.attn.in_proj_weight",
               {"lokr_w1": r(4, 4), "lokr_w2": r(12, 12)}),
        # a train_norm module
        Module("lora_unet_input_blocks_4_1_norm", UNET_PREFIX + "input_blocks.4.1.norm.weight",
               {"w_norm": r(64), "b_norm": r(64)}),
    ]  # fmt: skip
    sd = {f"{m.name}.{k}": v.contiguous() for m in modules for k, v in m.tensors.items()}
    sd["lora_unet_not_a_layer.lokr_w1"] = r(2, 2)
    sd["lora_unet_not_a_layer.lokr_w2"] = r(2, 2)
    path = tmp_path / "hand.safetensors"
    save_file(sd, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path, modules


def test_lokr_bake_equals_independent_kron_math(ckpts, tensors, tmp_path):
    path, modules = _handmade_lokr(tmp_path, tensors)
    recipe = MergeRecipe("copy", [str(ckpts["original"])], lokr=[(str(path), 0.8)], dtype="fp32")
    result = run_merge(recipe, tmp_path / "baked.safetensors")
    assert any("not_a_layer" in w for w in result.warnings)
    baked, o = load_file(result.path), tensors["original"]
    m = {mod.name: mod for mod in modules}

    full = m["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    exp = o[full.sgm_key].float() + 0.8 * torch.kron(full.tensors["lokr_w1"], full.tensors["lokr_w2"])
    assert torch.allclose(baked[full.sgm_key], exp, atol=1e-6)

    lr = m["lora_unet_input_blocks_1_0_in_layers_2"]
    w2 = (lr.tensors["lokr_w2_a"] @ lr.tensors["lokr_w2_b"]).reshape(8, 8, 3, 3)
    exp = o[lr.sgm_key].float() + 0.8 * 0.5 * torch.kron(lr.tensors["lokr_w1"][:, :, None, None], w2)
    assert torch.allclose(baked[lr.sgm_key], exp, atol=1e-6)

    tk = m["lora_unet_output_blocks_0_0_out_layers_3"]
    t2, wa, wb = tk.tensors["lokr_t2"], tk.tensors["lokr_w2_a"], tk.tensors["lokr_w2_b"]
    w2 = torch.zeros(8, 8, 3, 3)
    for p in range(8):
        for q_ in range(8):
            w2[p, q_] = sum(t2[i, j] * wa[i, p] * wb[j, q_] for i in range(3) for j in range(3))
    exp = o[tk.sgm_key].float() + 0.8 * (3.0 / 3) * torch.kron(tk.tensors["lokr_w1"][:, :, None, None], w2)
    assert torch.allclose(baked[tk.sgm_key], exp, atol=1e-5)

    te = m["lora_te2_text_model_encoder_layers_1_self_attn_k_proj"]
    fused_o, fused_b = o[te.sgm_key].float(), baked[te.sgm_key]
    assert torch.equal(fused_b[:48], fused_o[:48]) and torch.equal(fused_b[96:], fused_o[96:])
    assert torch.allclose(fused_b[48:96], fused_o[48:96] + 0.8 * torch.kron(te.tensors["lokr_w1"], te.tensors["lokr_w2"]),
                          atol=1e-6)  # fmt: skip

    nm = m["lora_unet_input_blocks_4_1_norm"]
    bias_key = nm.sgm_key.replace(".weight", ".bias")
    assert torch.allclose(baked[nm.sgm_key], o[nm.sgm_key].float() + 0.8 * nm.tensors["w_norm"], atol=1e-6)
    assert torch.allclose(baked[bias_key], o[bias_key].float() + 0.8 * nm.tensors["b_norm"], atol=1e-6)
    untouched = UNET_PREFIX + "out.2.weight"
    assert torch.equal(baked[untouched], o[untouched].float())


def test_lokr_bake_matches_lycoris_applied_at_run_time(ckpts, tmp_path):
    """A LoKr trained with LyCORIS (diffusers names, low-rank + full + tucker + norms) baked into the checkpoint
    gives the same UNet and TE2 outputs as LyCORIS hooking the unbaked model."""
    from lycoris import LycorisNetwork, create_lycoris

    comps = load_sdxl(ckpts["original"], dtype="fp32")
    nets = []
    for prefix, module, targets in (
        ("lycoris", comps.unet, ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]),
        ("lora_te2", comps.text_encoder_2, ["CLIPAttention", "CLIPMLP"]),
    ):
        LycorisNetwork.apply_preset({"enable_conv": True, "target_module": targets, "lora_prefix": prefix,
                                     "module_algo_map": {"Attention": {"factor": 4}, "FeedForward": {"factor": 2}}})  # fmt: skip
        net = create_lycoris(module, 1.0, linear_dim=4, linear_alpha=2, conv_dim=4, conv_alpha=3, algo="lokr",
                             factor=8, train_norm=True, use_tucker=True)  # fmt: skip
        net.apply_to()
        gen = torch.Generator().manual_seed(len(nets))
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if "norm" in name else 0.2))
        nets.append(net)
    lokr_sd = {}
    for net in nets:
        lokr_sd.update({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()})
    assert any(k.endswith("lokr_t2") for k in lokr_sd) and any(k.endswith("lokr_w2_a") for k in lokr_sd)
    lokr_path = tmp_path / "lyco.safetensors"
    save_file(lokr_sd, str(lokr_path))

    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    ctx, pooled = torch.randn(1, 77, 80), torch.randn(1, 48)
    cond = {"text_embeds": pooled, "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]])}
    ids = comps.tokenizer_2("1girl, solo", return_tensors="pt").input_ids
    with torch.no_grad():
        live_unet = comps.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample
        live_te = comps.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]

    baked_path = run_merge(MergeRecipe("copy", [str(ckpts["original"])], lokr=[(str(lokr_path), 1.0)], dtype="fp32"),
                           tmp_path / "baked.safetensors").path  # fmt: skip
    baked = load_sdxl(baked_path, dtype="fp32")
    with torch.no_grad():
        out_unet = baked.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample
        out_te = baked.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
    # The original is fp16 on disk, the LoKr fp32: differences come from fp32 summation order only.
    assert torch.allclose(out_unet, live_unet, atol=2e-4, rtol=1e-4)
    assert torch.allclose(out_te, live_te, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(out_unet, load_sdxl(ckpts["original"], dtype="fp32").unet(
        x, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample, atol=1e-3)  # fmt: skip


# -- bad input ------------------------------------------------------------------------------------------------


def test_different_key_sets_are_listed_and_can_take_from_a(ckpts, tensors, tmp_path):
    sd = dict(tensors["beta"])
    gone = UNET_PREFIX + "out.2.bias"
    sd.pop(gone)
    partial = tmp_path / "partial.safetensors"
    save_file(sd, str(partial))
    recipe = MergeRecipe("weighted_sum", [str(ckpts["gamma"]), str(partial)], weights=[0.5, 0.5])
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*out\.2\.bias") as e:
        run_merge(recipe, tmp_path / "x.safetensors")
    assert "take missing keys from A" in str(e.value)
    assert not (tmp_path / "x.safetensors").exists()
    recipe.missing = "take_a"
    merged = load_file(run_merge(recipe, tmp_path / "x.safetensors").path)
    assert torch.equal(merged[gone], tensors["gamma"][gone])


def test_shape_mismatch_names_the_key(ckpts, tensors, tmp_path):
    sd = dict(tensors["beta"])
    key = UNET_PREFIX + "out.2.bias"
    sd[key] = torch.zeros(7, dtype=torch.float16)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointError, match=r"out\.2\.bias' has shape \(7,\)"):
        plan_merge(MergeRecipe("weighted_sum", [str(ckpts["gamma"]), str(bad)], weights=[0.5, 0.5]))


def test_non_sdxl_and_truncated_inputs(ckpts, tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lokr_w1": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(CheckpointError, match="not an SDXL checkpoint"):
        plan_merge(MergeRecipe("weighted_sum", [str(ckpts["gamma"]), str(lora)], weights=[0.5, 0.5]))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpts["beta"].read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match="truncated") as e:
        plan_merge(MergeRecipe("weighted_sum", [str(ckpts["gamma"]), str(cut)], weights=[0.5, 0.5]))
    assert "cut.safetensors" in str(e.value)


def test_output_equal_to_an_input_is_refused(ckpts, tmp_path):
    copy = tmp_path / "g.safetensors"
    shutil.copyfile(ckpts["gamma"], copy)
    before = copy.read_bytes()
    with pytest.raises(KxlError, match="also an input"):
        run_merge(MergeRecipe("weighted_sum", [str(copy), str(ckpts["beta"])], weights=[0.5, 0.5]), copy)
    assert copy.read_bytes() == before


def test_full_disk_is_refused_before_writing(ckpts, tmp_path, monkeypatch):
    import trainer_core.atomic as atomic

    monkeypatch.setattr(
        atomic.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(10**9, 10**9, 1000)
    )
    with pytest.raises(KxlError, match="not enough free disk space"):
        run_merge(
            kohaku_xl_delta_recipe(ckpts["gamma"], ckpts["beta"], ckpts["original"]),
            tmp_path / "o.safetensors",
        )
    assert list(tmp_path.iterdir()) == []


def test_cancel_leaves_nothing_behind(ckpts, tmp_path):
    token = CancelToken()

    def on_event(ev):
        if ev.total and ev.done > ev.total / 3:
            token.cancel()

    with pytest.raises(Cancelled):
        run_merge(kohaku_xl_delta_recipe(ckpts["gamma"], ckpts["beta"], ckpts["original"]), tmp_path / "o.safetensors",
                  progress=Progress(callback=on_event, cancel_token=token, min_interval_s=0))  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_recipe_validation_messages(ckpts):
    with pytest.raises(KxlError, match="needs the original model"):
        MergeRecipe("weighted_sum", ["a", "b"], weights=[0.5, 0.5], revert=["te1_token"]).validate()
    with pytest.raises(KxlError, match="needs exactly 3 input"):
        MergeRecipe("add_difference", ["a", "b"], weights=[1.0]).validate()
    with pytest.raises(KxlError, match="unknown block 'IN42'"):
        MergeRecipe("weighted_sum", ["a", "b"], weights=[0.5, 0.5], block_weights={"IN42": [1, 0]}).validate()
