"""Shipped SDXL configs and CLIP tokenizers: real values, offline loading, reproducible tokenizer files."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import zipfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer_core.errors import KxlError
from trainer_core.models import tokenizers as tokenizers_module
from trainer_core.models.clip_vocab import (
    merges_from_merges_txt,
    merges_txt_text,
    vocab_from_merges,
    vocab_json_text,
)
from trainer_core.models.tokenizers import load_sdxl_tokenizers
from trainer_core.paths import resources_dir, sdxl_config_dir

SDXL = sdxl_config_dir()
TINY = resources_dir() / "tiny_sdxl"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _text_config(folder: Path) -> CLIPTextConfig:
    return CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)


# --- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [SDXL, TINY], ids=["sdxl", "tiny"])
def test_model_index_names_the_sdxl_components(folder: Path) -> None:
    index = _json(folder / "model_index.json")
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["tokenizer"] == index["tokenizer_2"] == ["transformers", "CLIPTokenizer"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["feature_extractor"] == index["image_encoder"] == [None, None]


@pytest.mark.parametrize("folder", [SDXL, TINY], ids=["sdxl", "tiny"])
def test_scheduler_is_sdxl_euler(folder: Path) -> None:
    scheduler = EulerDiscreteScheduler.from_pretrained(
        str(folder), subfolder="scheduler", local_files_only=True
    )
    cfg = scheduler.config
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (cfg.num_train_timesteps, cfg.prediction_type) == (1000, "epsilon")
    assert (cfg.steps_offset, cfg.timestep_spacing) == (1, "leading")
    assert (cfg.interpolation_type, cfg.use_karras_sigmas) == ("linear", False)
    # 'leading' + steps_offset 1 is what makes SDXL's 20-step schedule start at t=951.
    scheduler.set_timesteps(20)
    assert int(scheduler.timesteps[0]) == 951 and int(scheduler.timesteps[-1]) == 1


def test_sdxl_unet_has_real_values_and_parameter_count() -> None:
    cfg = UNet2DConditionModel.load_config(str(SDXL / "unet"))
    assert cfg["block_out_channels"] == [320, 640, 1280]
    assert cfg["attention_head_dim"] == [5, 10, 20]
    assert cfg["transformer_layers_per_block"] == [1, 2, 10]
    assert cfg["cross_attention_dim"] == 2048
    assert (cfg["addition_embed_type"], cfg["addition_time_embed_dim"]) == ("text_time", 256)
    assert cfg["projection_class_embeddings_input_dim"] == 2816
    assert cfg["use_linear_projection"] is True
    assert (cfg["sample_size"], cfg["in_channels"], cfg["out_channels"]) == (128, 4, 4)
    with torch.device("meta"):  # no memory: shapes only
        unet = UNet2DConditionModel.from_config(cfg)
    assert _params(unet) == 2_567_463_684


def test_sdxl_vae_has_real_values_and_parameter_count() -> None:
    cfg = AutoencoderKL.load_config(str(SDXL / "vae"))
    assert cfg["block_out_channels"] == [128, 256, 512, 512]
    assert (cfg["scaling_factor"], cfg["force_upcast"], cfg["latent_channels"]) == (0.13025, True, 4)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(cfg)
    assert _params(vae) == 83_653_863


def test_sdxl_text_encoders_have_real_values_and_parameter_counts() -> None:
    te1_cfg = _text_config(SDXL / "text_encoder")
    te2_cfg = _text_config(SDXL / "text_encoder_2")
    assert (te1_cfg.hidden_size, te1_cfg.num_hidden_layers, te1_cfg.hidden_act) == (768, 12, "quick_gelu")
    assert (te2_cfg.hidden_size, te2_cfg.num_hidden_layers, te2_cfg.hidden_act) == (1280, 32, "gelu")
    for cfg in (te1_cfg, te2_cfg):
        # Pooling finds the first EOS by this id, so it must equal the tokenizer's EOS.
        assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.bos_token_id, cfg.eos_token_id) == (
            49408,
            77,
            49406,
            49407,
        )
    with torch.device("meta"):
        te1 = CLIPTextModel(te1_cfg)
        te2 = CLIPTextModelWithProjection(te2_cfg)
    assert _params(te1) == 123_060_480
    assert _params(te2) == 694_659_840


def test_tiny_configs_build_a_consistent_working_model() -> None:
    te1 = CLIPTextModel(_text_config(TINY / "text_encoder"))
    te2 = CLIPTextModelWithProjection(_text_config(TINY / "text_encoder_2"))
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(TINY / "unet")))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(TINY / "vae")))
    h1, h2 = te1.config.hidden_size, te2.config.hidden_size
    # Equal hidden sizes make the single-file loader put TE1 weights into TE2 (specs/generation.md §8).
    assert (h1, h2) == (32, 48)
    assert unet.config.cross_attention_dim == h1 + h2
    assert unet.config.projection_class_embeddings_input_dim == 6 * 8 + te2.config.projection_dim
    assert len(vae.config.block_out_channels) == 4  # keeps the real 8x latent geometry
    with torch.no_grad():
        ids = torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73])
        hidden = torch.cat(
            [
                te1(ids, output_hidden_states=True).hidden_states[-2],
                te2(ids, output_hidden_states=True).hidden_states[-2],
            ],
            dim=-1,
        )
        pooled = te2(ids).text_embeds
        out = unet(
            torch.zeros(1, 4, 16, 16),
            torch.tensor([999]),
            encoder_hidden_states=hidden,
            added_cond_kwargs={
                "text_embeds": pooled,
                "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]]),
            },
        ).sample
        image = vae.decode(out).sample
    assert hidden.shape == (1, 77, 80) and pooled.shape == (1, 48)
    assert out.shape == (1, 4, 16, 16)
    assert image.shape == (1, 3, 128, 128)


# --- tokenizers ----------------------------------------------------------------------------------------------


def test_both_tokenizers_encode_with_the_real_clip_vocab() -> None:
    tok1, tok2 = load_sdxl_tokenizers()
    for tok in (tok1, tok2):
        assert len(tok) == 49408
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert tok.convert_tokens_to_ids(",</w>") == 267
        assert (tok.bos_token_id, tok.eos_token_id, tok.model_max_length) == (49406, 49407, 77)


def test_tokenizer_pads_with_eos_and_tokenizer_2_with_exclamation_id_0() -> None:
    tok1, tok2 = load_sdxl_tokenizers()
    ids1 = tok1("cat", padding="max_length").input_ids
    ids2 = tok2("cat", padding="max_length").input_ids
    assert ids1 == [49406, 2368] + [49407] * 75
    assert ids2 == [49406, 2368, 49407] + [0] * 74


def test_tokenizers_apply_ftfy_like_the_slow_clip_tokenizer() -> None:
    tok1, _ = load_sdxl_tokenizers()
    # ftfy turns curly quotes straight and full-width letters half-width; the bare fast tokenizer would not.
    assert tok1.encode("\u201ccat\u201d", add_special_tokens=False) == tok1.encode(
        '"cat"', add_special_tokens=False
    )
    assert tok1("\uff23\uff21\uff34").input_ids == [49406, 2368, 49407]


def test_tokenizers_are_cached_per_folder() -> None:
    assert load_sdxl_tokenizers() is load_sdxl_tokenizers(SDXL)


def test_tokenizers_load_offline_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("tokenizer loading tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(
        "HF_HOME", str(tmp_path / "hf")
    )  # empty cache: nothing can come from a previous download
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    tok1, tok2 = tokenizers_module._load_cached.__wrapped__(SDXL.resolve())
    assert tok2("a cat").input_ids == [49406, 320, 2368, 49407]
    assert tok1.pad_token == "<|endoftext|>" and tok2.pad_token == "!"


def test_missing_tokenizer_file_is_a_clear_error(tmp_path: Path) -> None:
    for sub in ("tokenizer", "tokenizer_2"):
        (tmp_path / sub).mkdir()
        for name in ("vocab.json", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp_path / sub / name).write_bytes((SDXL / sub / name).read_bytes())
    with pytest.raises(KxlError, match=r"tokenizer: CLIP tokenizer folder is missing merges\.txt"):
        load_sdxl_tokenizers(tmp_path)


# --- tokenizer files are reproducible ------------------------------------------------------------------------


def test_vocab_json_is_regenerated_exactly_from_merges_txt() -> None:
    merges_text = (SDXL / "tokenizer" / "merges.txt").read_text(encoding="utf-8")
    merges = merges_from_merges_txt(merges_text)
    assert len(merges) == 48894
    assert merges_txt_text(merges) == merges_text
    vocab = vocab_from_merges(merges)
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    expected = vocab_json_text(vocab)
    for sub in ("tokenizer", "tokenizer_2"):
        assert (SDXL / sub / "vocab.json").read_text(encoding="utf-8") == expected
        assert (SDXL / sub / "merges.txt").read_text(encoding="utf-8") == merges_text


def _load_build_script():
    spec = importlib.util.spec_from_file_location(
        "build_clip_tokenizer", REPO_ROOT / "scripts" / "build_clip_tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_refuses_a_bpe_file_with_the_wrong_hash(tmp_path: Path) -> None:
    script = _load_build_script()
    wheel = tmp_path / "open_clip_torch-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", b"not the real file")
    out = tmp_path / "out"
    assert script.main(["--wheel", str(wheel), "--out", str(out)]) == 2
    assert not out.exists()


def test_build_script_names_a_wheel_without_the_bpe_file(tmp_path: Path) -> None:
    script = _load_build_script()
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/file.txt", b"x")
    with pytest.raises(KxlError, match="bpe_simple_vocab_16e6.txt.gz"):
        script.read_bpe_gz(wheel)


def test_tokenizers_stay_plain_clip_tokenizers_with_ftfy_after_copy(tmp_path: Path) -> None:
    tok1, _ = load_sdxl_tokenizers()
    # diffusers records type(component) in model_index.json; a private subclass would make saved pipelines unloadable.
    assert type(tok1) is CLIPTokenizer
    clone = copy.deepcopy(tok1)
    assert clone.encode("\u201ccat\u201d", add_special_tokens=False) == [257, 2368, 257]
    tok1.save_pretrained(str(tmp_path))
    assert _json(tmp_path / "tokenizer_config.json")["tokenizer_class"] == "CLIPTokenizer"
