"""Offline load/save of SDXL checkpoints on the tiny demo model: bit-exact, interoperable, clear errors."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer_core.errors import CheckpointError
from trainer_core.models.architectures import sgm_shapes
from trainer_core.models.checkpoint_info import describe_checkpoint
from trainer_core.models.loading import load_sdxl, save_diffusers_folder, save_single_file
from trainer_core.models.tiny import build_tiny_components, write_demo_checkpoints
from trainer_core.paths import resources_dir


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach a hub fails loudly instead of silently succeeding on a networked dev box."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def demo_ckpts(tmp_path_factory):
    return write_demo_checkpoints(tmp_path_factory.mktemp("ckpt"), seed=0)


def test_tiny_checkpoint_has_sdxl_single_file_keys(demo_ckpts):
    sd = load_file(demo_ckpts["original"])
    assert {k: tuple(v.shape) for k, v in sd.items()} == sgm_shapes("kxl-tiny")
    assert all(v.dtype == torch.float16 for v in sd.values())
    info = describe_checkpoint(demo_ckpts["original"])
    assert (info.kind, info.arch, info.dtype, info.tensor_count) == (
        "sdxl-single-file",
        "kxl-tiny",
        "fp16",
        832,
    )


def test_single_file_round_trip_is_bit_exact(demo_ckpts, tmp_path):
    comps = load_sdxl(demo_ckpts["gamma"])
    out = save_single_file(
        comps, tmp_path / "again.safetensors", metadata={"kxl.demo_role": "gamma", "kxl.seed": "0"}
    )
    assert out.read_bytes() == demo_ckpts["gamma"].read_bytes()


def test_same_seed_same_bytes_and_seeds_differ(tmp_path, demo_ckpts):
    again = write_demo_checkpoints(tmp_path / "a", seed=0)
    other = write_demo_checkpoints(tmp_path / "b", seed=1)
    assert again["beta"].read_bytes() == demo_ckpts["beta"].read_bytes()
    assert other["beta"].read_bytes() != demo_ckpts["beta"].read_bytes()


def test_gamma_and_beta_drift_from_original_most_in_the_embeddings(demo_ckpts):
    o, g = load_file(demo_ckpts["original"]), load_file(demo_ckpts["gamma"])
    emb = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
    conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"

    def rel(k):
        return ((g[k].float() - o[k].float()).norm() / o[k].float().norm()).item()

    assert rel(conv) > 0.005
    assert rel(emb) > 5 * rel(conv)


def test_diffusers_from_single_file_reads_our_checkpoint_identically(demo_ckpts, tmp_path):
    """Interop: diffusers' own single-file converter (as ComfyUI/webui-style loaders do) agrees with ours."""
    from diffusers import StableDiffusionXLPipeline

    cfg = tmp_path / "cfg"
    shutil.copytree(resources_dir() / "tiny_sdxl", cfg)
    for tok in ("tokenizer", "tokenizer_2"):
        shutil.copytree(resources_dir() / "sdxl" / tok, cfg / tok)
    theirs = StableDiffusionXLPipeline.from_single_file(
        str(demo_ckpts["beta"]), config=str(cfg), local_files_only=True, torch_dtype=torch.float16
    )
    ours = load_sdxl(demo_ckpts["beta"])
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert set(a) == set(b), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_diffusers_folder_round_trip(demo_ckpts, tmp_path):
    comps = load_sdxl(demo_ckpts["original"])
    folder = save_diffusers_folder(comps, tmp_path / "pipe")
    assert describe_checkpoint(folder).kind == "diffusers-folder"
    again = load_sdxl(folder)
    assert again.arch == "kxl-tiny"
    out = save_single_file(
        again, tmp_path / "from_folder.safetensors", metadata={"kxl.demo_role": "original", "kxl.seed": "0"}
    )
    assert load_file(out).keys() == load_file(demo_ckpts["original"]).keys()
    a, b = load_file(out), load_file(demo_ckpts["original"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_model_runs_txt2img_through_diffusers(demo_ckpts):
    comps = load_sdxl(demo_ckpts["original"], dtype="fp32")
    pipe = comps.pipeline()
    pipe.set_progress_bar_config(disable=True)
    result = pipe("1girl, blonde hair, white background", num_inference_steps=3, height=128, width=96,
                  generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
    image = result.images[0]
    assert image.shape == (128, 96, 3)
    assert float(image.std()) > 0.0  # a real decode, not a blank frame


def test_build_tiny_is_deterministic():
    a = build_tiny_components(3).unet.state_dict()
    b = build_tiny_components(3).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- bad input ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found") as e:
        load_sdxl(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(e.value)


def test_truncated_safetensors_names_the_file_and_tensor(demo_ckpts, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(demo_ckpts["original"].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_sdxl(cut)
    assert "cut.safetensors" in str(e.value)
    with pytest.raises(CheckpointError, match="truncated"):
        describe_checkpoint(cut)


def test_garbage_file_is_not_safetensors(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_sdxl(bad)


def test_non_sdxl_checkpoint_is_refused_with_a_reason(tmp_path):
    sd1 = tmp_path / "sd15.safetensors"
    save_file(
        {
            "cond_stage_model.transformer.w": torch.zeros(2),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        },
        str(sd1),
    )
    with pytest.raises(CheckpointError, match="not an SDXL checkpoint.*SD 1"):
        load_sdxl(sd1)
    lokr = tmp_path / "style.safetensors"
    save_file({"lora_unet_out_2.lokr_w1": torch.zeros(2, 2)}, str(lokr))
    with pytest.raises(CheckpointError, match="LoRA/LyCORIS"):
        load_sdxl(lokr)


def test_incomplete_sdxl_lists_missing_tensors(demo_ckpts, tmp_path):
    sd = load_file(demo_ckpts["original"])
    sd.pop("model.diffusion_model.out.2.weight")
    partial = tmp_path / "partial.safetensors"
    save_file(sd, str(partial))
    with pytest.raises(CheckpointError, match=r"1 of 832 tensors are missing.*out\.2\.weight"):
        load_sdxl(partial)


def test_wrong_shape_names_the_key(demo_ckpts, tmp_path):
    sd = load_file(demo_ckpts["original"])
    sd["model.diffusion_model.out.2.bias"] = torch.zeros(5, dtype=torch.float16)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointError, match=r"out\.2\.bias.*shape \(5,\)"):
        load_sdxl(bad)


def test_pickle_checkpoints_are_refused_unless_allowed(demo_ckpts, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(demo_ckpts["original"])}, ckpt)
    with pytest.raises(CheckpointError, match="pickle"):
        load_sdxl(ckpt)
    comps = load_sdxl(ckpt, allow_pickle=True)  # weights_only=True: no code runs
    assert comps.arch == "kxl-tiny"


def test_pickle_with_code_is_rejected_even_when_allowed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    ckpt = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, ckpt)
    with pytest.raises(CheckpointError, match="cannot read pickle checkpoint safely"):
        load_sdxl(ckpt, allow_pickle=True)


# -- streamed loading straight into the training dtypes (issue #14.6) ------------------------------------------


def _bench_load_rss():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_load_rss.py"
    spec = importlib.util.spec_from_file_location("bench_load_rss", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def _states(comps) -> dict[str, torch.Tensor]:
    return {f"{c}/{k}": v for c, m in comps.models().items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("dtype", ["fp32", None, "fp16", "bf16"])
def test_streamed_load_equals_converting_the_whole_file(demo_ckpts, dtype):
    """Read tensor by tensor, each straight into its dtype: the same tensors, bit for bit, as the whole file read
    at once, converted to diffusers names and cast afterwards (what the loader did before)."""
    from trainer_core.models.architectures import layout_for
    from trainer_core.models.loading import torch_dtype
    from trainer_core.models.sdxl_layout import adapt_te1_keys

    ours = load_sdxl(demo_ckpts["gamma"], dtype=dtype)
    comps_sd, extras, _ = layout_for("kxl-tiny").from_sgm(load_file(demo_ckpts["gamma"]))
    dt = torch_dtype(dtype)
    for name, model in ours.models().items():
        ref = comps_sd[name]
        if name == "text_encoder":
            ref = adapt_te1_keys(ref, model.state_dict().keys())
        mine = model.state_dict()
        assert set(mine) == set(ref), name
        for k, v in ref.items():
            want = v.to(dt) if dt is not None else v
            assert mine[k].dtype == want.dtype and torch.equal(mine[k], want), f"{name}/{k}"
    assert ours.extras.keys() == extras.keys()
    assert all(torch.equal(ours.extras[k], v) for k, v in extras.items())  # kept as stored


def test_loaded_tensors_own_their_memory(demo_ckpts):
    """TE2's q/k/v are read in place from one fused tensor: each must still be a tensor of its own (a view of a
    shared buffer would keep the others alive and cannot be saved to safetensors)."""
    comps = load_sdxl(demo_ckpts["original"])
    params = [p for m in comps.models().values() for p in m.parameters()]
    assert len({p.data_ptr() for p in params}) == len(params)
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params)
    assert all(p.is_contiguous() for p in params)


def test_per_component_dtypes(demo_ckpts):
    comps = load_sdxl(demo_ckpts["beta"], dtype={"unet": "fp16", "text_encoder": "bf16", "vae": "fp32"})
    got = {n: {p.dtype for p in m.parameters()} for n, m in comps.models().items()}
    # text_encoder_2 is not named: as stored
    want = {
        "unet": torch.float16,
        "text_encoder": torch.bfloat16,
        "vae": torch.float32,
        "text_encoder_2": torch.float16,
    }
    assert got == {n: {dt} for n, dt in want.items()}
    with pytest.raises(CheckpointError, match="unknown component.*unte"):
        load_sdxl(demo_ckpts["beta"], dtype={"unte": "fp16"})


@pytest.mark.parametrize("preset", ["tiny-demo", "kohaku-xl-delta"])
def test_trainer_load_ends_as_the_fp32_load_then_cast_did(demo_ckpts, preset):
    """The trainer reads the base straight into its training dtypes; after `prepare_for_training` every component
    holds exactly what the old fp32 load + cast left, in the same dtypes; the tiny model's UNet output is the same
    bit for bit."""
    from trainer_core.train.config import load_preset
    from trainer_core.train.micro_step import prepare_for_training, training_dtypes

    t = load_preset(preset).training
    new = load_sdxl(demo_ckpts["gamma"], dtype=training_dtypes(t))
    before = {n: {p.dtype for p in m.parameters()} for n, m in new.models().items()}
    prepare_for_training(new, t, torch.device("cpu"))
    old = _bench_load_rss().load_old_way(demo_ckpts["gamma"])
    prepare_for_training(old, t, torch.device("cpu"))
    after = {n: {p.dtype for p in m.parameters()} for n, m in new.models().items()}
    assert before == after == {n: {p.dtype for p in m.parameters()} for n, m in old.models().items()}
    assert after["vae"] == {torch.float32}
    assert after["unet"] == {torch.float16 if preset == "kohaku-xl-delta" else torch.float32}
    a, b = _states(new), _states(old)
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    if preset == "tiny-demo":
        g = torch.Generator().manual_seed(0)
        x, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 80, generator=g)
        cond = {"text_embeds": torch.randn(1, 48, generator=g), "time_ids": torch.randn(1, 6, generator=g)}
        with torch.no_grad():
            outs = [c.unet(x, torch.tensor([500]), encoder_hidden_states=ctx, added_cond_kwargs=cond).sample
                    for c in (new, old)]  # fmt: skip
        assert outs[0].dtype == torch.float32 and torch.equal(outs[0], outs[1])


def test_a_non_float_weight_is_refused_naming_it(demo_ckpts, tmp_path):
    sd = load_file(demo_ckpts["original"])
    key = "model.diffusion_model.out.2.bias"
    sd[key] = torch.zeros(sd[key].shape, dtype=torch.int32)
    bad = tmp_path / "int.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointError, match=r"out\.2\.bias' has dtype I32, expected a float type") as e:
        load_sdxl(bad)
    assert "int.safetensors" in str(e.value)
