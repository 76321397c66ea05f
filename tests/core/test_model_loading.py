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
