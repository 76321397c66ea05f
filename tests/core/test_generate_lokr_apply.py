"""LoKr at inference (specs §9): applied weights equal a merge-style bake on SGM keys; restore is bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import trainer_core.hf_quiet  # noqa: F401
from trainer_core.errors import CheckpointError, KxlError
from trainer_core.generate.lokr_apply import LokrUse, apply_lokrs, parse_lokr_arg
from trainer_core.lokr.file import read_lokr
from trainer_core.lokr.keys import module_targets
from trainer_core.lokr.math import lokr_delta
from trainer_core.models.architectures import layout_for
from trainer_core.models.loading import components_to_single_file_state
from trainer_core.models.sdxl_layout import adapt_te1_keys
from trainer_core.models.tiny import build_tiny_components

ARCH = "kxl-tiny"


@pytest.fixture(scope="module")
def comps():
    return build_tiny_components(0)


def _name(pred) -> str:
    """The canonical (kohya/SGM) module name of the first target matching `pred(target)`."""
    for target in module_targets(ARCH).values():
        if pred(target):
            return target.name
    raise AssertionError("no such module in the tiny architecture")


def _shape(comps, target) -> tuple[int, ...]:
    model = getattr(comps, target.weight.component)
    return tuple(model.get_parameter(target.weight.diffusers_key).shape)


def _write_lokr(path: Path, comps, seed: int, *, extra: dict | None = None, metadata=None) -> Path:
    """A LoKr file exercising every factorisation: full/low-rank W1 and W2, Tucker conv, fused TE2 q, norm."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    table = module_targets(ARCH)
    tensors: dict[str, torch.Tensor] = {}
    linear = _name(
        lambda t: t.weight.component == "unet" and t.weight.diffusers_key.endswith("attn1.to_q.weight")
    )
    out_f, in_f = _shape(comps, table[linear])
    tensors |= {f"{linear}.lokr_w1": r(2, 2), f"{linear}.lokr_w2_a": r(out_f // 2, 4),
                f"{linear}.lokr_w2_b": r(4, in_f // 2), f"{linear}.alpha": torch.tensor(2.0)}  # fmt: skip
    conv = _name(
        lambda t: t.weight.component == "unet" and t.weight.diffusers_key.endswith("resnets.0.conv1.weight")
    )
    o, i, kh, kw = _shape(comps, table[conv])
    tensors |= {f"{conv}.lokr_w1": r(2, 2), f"{conv}.lokr_w2_a": r(o // 2, 4),
                f"{conv}.lokr_w2_b": r(4, i // 2 * kh * kw), f"{conv}.alpha": torch.tensor(1.0)}  # fmt: skip
    tucker = _name(
        lambda t: t.weight.component == "unet" and t.weight.diffusers_key.endswith("resnets.1.conv2.weight")
    )
    o, i, kh, kw = _shape(comps, table[tucker])
    tensors |= {f"{tucker}.lokr_w1": r(2, 2), f"{tucker}.lokr_t2": r(3, 3, kh, kw),
                f"{tucker}.lokr_w2_a": r(3, o // 2), f"{tucker}.lokr_w2_b": r(3, i // 2),
                f"{tucker}.alpha": torch.tensor(3.0)}  # fmt: skip
    te1 = _name(lambda t: t.weight.component == "text_encoder" and t.weight.diffusers_key.endswith("layers.0.self_attn.q_proj.weight"))  # fmt: skip
    o, i = _shape(comps, table[te1])
    tensors |= {f"{te1}.lokr_w1_a": r(4, 2), f"{te1}.lokr_w1_b": r(2, 4), f"{te1}.lokr_w2": r(o // 4, i // 4),
                f"{te1}.alpha": torch.tensor(1.0)}  # fmt: skip
    te2 = _name(lambda t: t.weight.component == "text_encoder_2" and t.weight.diffusers_key.endswith("layers.1.self_attn.k_proj.weight"))  # fmt: skip
    o, i = _shape(comps, table[te2])
    # Both factors full: alpha must be ignored however large it is.
    tensors |= {
        f"{te2}.lokr_w1": r(4, 4),
        f"{te2}.lokr_w2": r(o // 4, i // 4),
        f"{te2}.alpha": torch.tensor(1e4),
    }
    # The same UNet layer spelled with its diffusers path (LyCORIS standalone files).
    to_v = next(t for t in table.values() if t.weight.component == "unet" and t.weight.diffusers_key.endswith("attn2.to_v.weight"))  # fmt: skip
    dname = "lycoris_" + to_v.weight.diffusers_key.removesuffix(".weight").replace(".", "_")
    o, i = _shape(comps, to_v)
    tensors |= {f"{dname}.lokr_w1": r(2, 2), f"{dname}.lokr_w2": r(o // 2, i // 2)}
    norm = next(t for t in table.values() if t.weight.component == "unet" and t.weight.diffusers_key.endswith("transformer_blocks.0.norm1.weight"))  # fmt: skip
    n = _shape(comps, norm)[0]
    tensors |= {f"{norm.name}.w_norm": r(n), f"{norm.name}.b_norm": r(n)}
    tensors |= extra or {}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _bake(comps, uses: list[tuple[Path, float]]) -> dict[str, dict[str, torch.Tensor]]:
    """Merge-engine style: patch the SGM single-file state dict (fused q/k/v rows for TE2), then split it."""
    # clone: the single-file state shares storage with the live parameters (no dtype change, no copy).
    state = {k: v.clone() for k, v in components_to_single_file_state(comps).items()}
    for path, mult in uses:
        for module in read_lokr(path, ARCH).modules:
            w = module.target.weight
            full = state[w.sgm_key]
            rows = (
                slice(None)
                if w.part is None
                else slice(w.part * full.shape[0] // 3, (w.part + 1) * full.shape[0] // 3)
            )
            if module.is_norm:
                full[rows] += mult * module.tensors["w_norm"]
                state[module.target.bias.sgm_key] += mult * module.tensors["b_norm"]
            else:
                full[rows] += mult * lokr_delta(module.tensors, tuple(full[rows].shape))
    comps_sd, _, _ = layout_for(ARCH).from_sgm(state)
    comps_sd["text_encoder"] = adapt_te1_keys(
        comps_sd["text_encoder"], comps.text_encoder.state_dict().keys()
    )
    return comps_sd


def _snapshot(comps) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in comps.models().items()}


def test_applied_equals_bake_and_restore_is_bit_exact(comps, tmp_path):
    a = _write_lokr(tmp_path / "style_a.safetensors", comps, 1)
    b = _write_lokr(tmp_path / "style_b.safetensors", comps, 2)
    before = _snapshot(comps)
    expected = _bake(comps, [(a, 0.8), (b, -0.5)])
    applied = apply_lokrs(comps, [LokrUse(a, 0.8), (b, -0.5)])
    assert applied.modules_patched == 8  # 6 LoKr weights + norm weight + norm bias
    assert applied.warnings == []
    changed = 0
    for name, model in comps.models().items():
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, expected[name][key], rtol=0, atol=1e-7, msg=f"{name}.{key}")
            changed += not torch.equal(value, before[name][key])
    assert changed == 8
    applied.restore()
    for name, model in comps.models().items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key]), f"{name}.{key} not restored exactly"


def test_restore_is_bit_exact_in_half_precision(comps, tmp_path):
    half = build_tiny_components(0)
    for m in half.models().values():
        m.to(torch.float16)
    before = _snapshot(half)
    path = _write_lokr(tmp_path / "h.safetensors", comps, 3)
    applied = apply_lokrs(half, [LokrUse(path, 1.0)])
    expected = _bake(comps, [(path, 1.0)])  # fp32 bake from the same base values (fp16 -> fp32 is exact)
    unet_key = next(k for k in expected["unet"] if k.endswith("attn1.to_q.weight"))
    got = half.unet.state_dict()[unet_key]
    assert got.dtype == torch.float16 and not torch.equal(got, before["unet"][unet_key])
    base32 = before["unet"][unet_key].float()
    delta_expected = expected["unet"][unet_key] - comps.unet.state_dict()[unet_key]
    torch.testing.assert_close((got.float() - base32), delta_expected, rtol=0, atol=2e-3)
    applied.restore()
    applied.restore()  # idempotent
    for name, model in half.models().items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key])


def test_unmatched_modules_are_skipped_with_a_warning(comps, tmp_path):
    path = _write_lokr(tmp_path / "odd.safetensors", comps, 4,
                       extra={"lora_unet_no_such_block.lokr_w1": torch.ones(2, 2),
                              "lora_unet_no_such_block.lokr_w2": torch.ones(2, 2)})  # fmt: skip
    applied = apply_lokrs(comps, [LokrUse(path, 1.0)])
    try:
        assert len(applied.warnings) == 1
        assert "odd.safetensors: 1 module(s)" in applied.warnings[0]
        assert "lora_unet_no_such_block" in applied.warnings[0]
    finally:
        applied.restore()


def test_bad_files_leave_the_model_untouched(comps, tmp_path):
    before = _snapshot(comps)
    sd15 = _write_lokr(tmp_path / "sd15.safetensors", comps, 5, metadata={"ss_base_model_version": "sd_v1"})
    good = _write_lokr(tmp_path / "good.safetensors", comps, 6)
    with pytest.raises(CheckpointError, match="trained for 'sd_v1', not SDXL"):
        apply_lokrs(comps, [LokrUse(good, 1.0), LokrUse(sd15, 1.0)])
    with pytest.raises(CheckpointError, match="LoKr file not found"):
        apply_lokrs(comps, [LokrUse(tmp_path / "missing.safetensors", 1.0)])
    linear = _name(
        lambda t: t.weight.component == "unet" and t.weight.diffusers_key.endswith("attn1.to_q.weight")
    )
    wrong = tmp_path / "wrong_shape.safetensors"
    save_file({f"{linear}.lokr_w1": torch.ones(3, 3), f"{linear}.lokr_w2": torch.ones(5, 5)}, str(wrong))
    with pytest.raises(CheckpointError, match="does not fit its layer"):
        apply_lokrs(comps, [LokrUse(good, 1.0), LokrUse(wrong, 1.0)])
    for name, model in comps.models().items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key])


def test_parse_lokr_arg(tmp_path):
    assert parse_lokr_arg("a/b.safetensors:0.8") == LokrUse(Path("a/b.safetensors"), 0.8)
    assert parse_lokr_arg("b.safetensors") == LokrUse(Path("b.safetensors"), 1.0)
    assert parse_lokr_arg("b.safetensors:-1") == LokrUse(Path("b.safetensors"), -1.0)
    with pytest.raises(KxlError, match="strength 'abc'"):
        parse_lokr_arg("b.safetensors:abc")


def test_applied_equals_the_merge_engines_bake(comps, tmp_path):
    """The Merge tab's `copy` + LoKr bake and run-time application give the same weights (both fp32)."""
    from trainer_core.merge.engine import run_merge
    from trainer_core.merge.recipe import MergeRecipe
    from trainer_core.models.loading import load_sdxl, save_single_file

    base = save_single_file(comps, tmp_path / "base.safetensors", dtype="fp32")
    lokr = _write_lokr(tmp_path / "bake_me.safetensors", comps, 7)
    recipe = MergeRecipe(operation="copy", inputs=[str(base)], lokr=[(str(lokr), 0.6)], dtype="fp32")
    baked = load_sdxl(run_merge(recipe, tmp_path / "baked.safetensors").path)
    live = load_sdxl(base)
    before = _snapshot(live)
    applied = apply_lokrs(live, [LokrUse(lokr, 0.6)])
    differing = 0
    for name, model in live.models().items():
        reference = getattr(baked, name).state_dict()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-6, msg=f"{name}.{key}")
            differing += not torch.equal(value, before[name][key])
    assert differing == applied.modules_patched == 8
