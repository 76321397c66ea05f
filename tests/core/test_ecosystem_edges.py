"""#18: what other tools trip over in our files — LoRA names in infotext (A1111's paste handler), the LoKr hash in
a baked checkpoint's recipe, a dataset config sd-scripts accepts, no hub-kernel noise in our output, and
TensorBoard event files that TensorBoard can read."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from safetensors.torch import save_file
from support import write_train_squares

from trainer_core.generate.infotext import (
    create_infotext,
    format_lora_hashes,
    lora_infotext_name,
    lora_name_matches,
    lora_prompt_tag,
    parse_infotext,
    parse_lora_hashes,
    read_png_parameters,
)
from trainer_core.generate.prompt import extra_network_multiplier, strip_extra_networks

REPO = Path(__file__).resolve().parents[2]

# -------------------------------------------------------------------------------- 1. LoRA names in infotext

AWKWARD_NAMES = [
    "style, v2 (test)",
    "a:b",
    "plain",
    "with  two spaces",
    "x(1): y, z",
    "((weird)), [name]",
    "arrow>name<",
]


def a1111_paste_lora_hashes(value: str) -> dict[str, str]:
    """The documented A1111 rule for reading `Lora hashes`: split on ", ", then each entry on ": ". An entry
    that does not split into exactly (name, hash) is what makes A1111's paste handler fail (IndexError)."""
    result = {}
    for entry in value.split(", "):
        parts = entry.split(": ")
        assert len(parts) == 2, f"A1111 cannot split {entry!r} into name and hash"
        result[parts[0].strip()] = parts[1].strip()
    return result


def a1111_paste_lora_hashes_code_rule(value: str) -> dict[str, str]:
    """What the paste handler's code does: split on ",", then on the first ":" and index [1]."""
    pairs = [entry.strip().split(":", 1) for entry in value.split(",")]
    return {pair[0].strip(): pair[1].strip() for pair in pairs}  # IndexError on a name holding ","


def _fake_hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:12]


def test_lora_hashes_with_awkward_names_parse_the_a1111_way():
    items = [(name, _fake_hash(i)) for i, name in enumerate(AWKWARD_NAMES)]
    tags = " ".join(lora_prompt_tag(name, 0.5 + i / 10) for i, (name, _) in enumerate(items))
    text = create_infotext(
        f"1girl, (solo:1.2), {tags}",
        "lowres",
        {"Steps": 20, "Sampler": "Euler a", "Seed": 1, "Lora hashes": format_lora_hashes(items)},
    )
    params = parse_infotext(text)
    expected = {lora_infotext_name(name): digest for name, digest in items}
    assert len(expected) == len(items)  # no two of these names collapse into one
    for name in expected:
        assert not any(ch in name for ch in ":,<>"), name
    assert a1111_paste_lora_hashes(params["Lora hashes"]) == expected
    assert a1111_paste_lora_hashes_code_rule(params["Lora hashes"]) == expected
    assert parse_lora_hashes(params["Lora hashes"]) == expected
    # A1111's paste handler finds each tag's name (`<lora:([^:]+):`) in that mapping: every LoKr keeps its hash.
    tag_names = re.findall(r"<lora:([^:]+):", params["Prompt"])
    assert [expected[name] for name in tag_names] == [digest for _, digest in items]
    # Our own reader gets every tag back, matched to its file, with its strength.
    prompt, found = strip_extra_networks(params["Prompt"])
    assert prompt == "1girl, (solo:1.2), " + " " * (len(items) - 1)
    assert [kind for kind, _, _ in found] == ["lora"] * len(items)
    for (_, tag_name, args), (i, (stem, _)) in zip(found, enumerate(items), strict=True):
        assert lora_name_matches(tag_name, stem)
        assert extra_network_multiplier(args) == pytest.approx(0.5 + i / 10)


def test_the_old_writer_output_is_what_broke_a1111():
    """The guard above is meaningful: the name written verbatim makes both A1111 rules fail."""
    verbatim = "style, v2 (test): 0e77aaaaaaaa, plain: 0123456789ab"
    with pytest.raises(AssertionError):
        a1111_paste_lora_hashes(verbatim)
    with pytest.raises(IndexError):
        a1111_paste_lora_hashes_code_rule(verbatim)


def test_lora_names_keep_what_a1111_keeps():
    assert lora_infotext_name("mylokr") == "mylokr"
    assert lora_infotext_name("style, v2 (test)") == "style v2 (test)"
    assert lora_infotext_name("a:b") == "ab"
    assert lora_infotext_name(":,") == "lokr"  # never an empty name
    assert lora_prompt_tag("a:b, c", 1.0) == "<lora:ab c:1>"
    assert lora_prompt_tag("mylokr", 0.75) == "<lora:mylokr:0.75>"
    assert lora_name_matches("mylokr", "mylokr") and not lora_name_matches("other", "mylokr")
    # the spec vector keeps parsing
    assert parse_lora_hashes("mylokr: 0123456789ab") == {"mylokr": "0123456789ab"}


# -------------------------------------------------------------------------------- 2. LoKr hash in the recipe


def test_baked_checkpoint_recipe_records_the_lokr_files_hash(squares, tmp_path):
    from safetensors.torch import load_file

    from trainer_core.merge.engine import run_merge
    from trainer_core.merge.recipe import MergeRecipe
    from trainer_core.merge.sources import metadata_of, recipe_from_metadata
    from trainer_core.models.sdxl_layout import UNET_PREFIX

    base, _ = squares  # a tiny SDXL-layout single-file checkpoint
    g = torch.Generator().manual_seed(3)
    lokr = tmp_path / "style, v2.safetensors"
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lokr_w1": torch.randn(4, 4, generator=g) * 0.05,
               f"{name}.lokr_w2": torch.randn(16, 16, generator=g) * 0.05}, str(lokr))  # fmt: skip
    result = run_merge(
        MergeRecipe("copy", [str(base)], lokr=[(str(lokr), 0.8)], dtype="fp32"),
        tmp_path / "baked.safetensors",
    )
    recipe = recipe_from_metadata(metadata_of(result.path))
    file_sha = hashlib.sha256(lokr.read_bytes()).hexdigest()[:10]
    ckpt_sha = hashlib.sha256(base.read_bytes()).hexdigest()[:10]
    assert recipe["inputs"][0]["sha256"] == ckpt_sha  # the checkpoints' format: the file's sha256[:10]
    assert recipe["lokr"] == [{"name": "style, v2", "sha256": file_sha, "multiplier": 0.8}]
    assert file_sha != "0" * 10
    assert result.input_hashes[lokr.name] == file_sha
    # the patched header is still a valid safetensors file with the baked weight in it
    baked = load_file(str(result.path))
    assert UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight" in baked


# -------------------------------------------------------------------------------- 3. sd-scripts dataset config

# kohya-ss/sd-scripts library/config_util.py (ConfigSanitizer, as used by sdxl_train_network.py: DreamBooth-style
# subsets, dropout options on) re-expressed as allow-lists: {key: accepted types}. voluptuous rejects every key
# not listed ("extra keys not allowed") and a value of another type.
BOOL, INT, STR, NUMBER = (bool,), (int,), (str,), (int, float)
PAIR_OF_FLOATS = "pair_of_floats"
INT_OR_PAIR = "int_or_pair_of_ints"
SUBSET_ASCENDABLE = {
    "color_aug": BOOL, "face_crop_aug_range": PAIR_OF_FLOATS, "flip_aug": BOOL, "num_repeats": INT,
    "random_crop": BOOL, "shuffle_caption": BOOL, "keep_tokens": INT, "keep_tokens_separator": STR,
    "secondary_separator": STR, "enable_wildcard": BOOL, "token_warmup_min": INT, "token_warmup_step": NUMBER,
    "caption_prefix": STR, "caption_suffix": STR,
}  # fmt: skip
DROPOUT = {
    "caption_dropout_every_n_epochs": INT,
    "caption_dropout_rate": NUMBER,
    "caption_tag_dropout_rate": NUMBER,
}
DREAMBOOTH_ASCENDABLE = {"caption_extension": STR, "class_tokens": STR, "cache_info": BOOL}
DREAMBOOTH_SUBSET_ONLY = {"image_dir": STR, "is_reg": BOOL}
DATASET_ASCENDABLE = {
    "batch_size": INT, "bucket_no_upscale": BOOL, "bucket_reso_steps": INT, "enable_bucket": BOOL,
    "max_bucket_reso": INT, "min_bucket_reso": INT, "resolution": INT_OR_PAIR, "network_multiplier": (float,),
}  # fmt: skip
GENERAL_KEYS = {**DATASET_ASCENDABLE, **SUBSET_ASCENDABLE, **DREAMBOOTH_ASCENDABLE, **DROPOUT}
DATASET_KEYS = {**DATASET_ASCENDABLE, **SUBSET_ASCENDABLE, **DREAMBOOTH_ASCENDABLE, **DROPOUT}
SUBSET_KEYS = {**SUBSET_ASCENDABLE, **DREAMBOOTH_SUBSET_ONLY, **DREAMBOOTH_ASCENDABLE, **DROPOUT}


def _type_ok(value: Any, accepted: Any) -> bool:
    def plain(v: Any, types: tuple[type, ...]) -> bool:
        if isinstance(v, bool):
            return bool in types
        return bool not in types and isinstance(v, types)

    if accepted == PAIR_OF_FLOATS:
        return isinstance(value, list) and len(value) == 2 and all(plain(v, (float,)) for v in value)
    if accepted == INT_OR_PAIR:
        pair = isinstance(value, list) and len(value) == 2 and all(plain(v, INT) for v in value)
        return plain(value, INT) or pair
    return plain(value, accepted)


def sd_scripts_problems(config: dict[str, Any]) -> list[str]:
    """What sd-scripts' dataset-config schema would reject in `config` (empty: accepted)."""
    problems: list[str] = []

    def check(table: Any, allowed: dict[str, Any], where: str, nested: dict[str, Any] | None = None) -> None:
        if not isinstance(table, dict):
            problems.append(f"{where}: not a table")
            return
        for key, value in table.items():
            if nested is not None and key in nested:
                continue
            if key not in allowed:
                problems.append(f"extra keys not allowed @ data[{where}][{key!r}]")
            elif not _type_ok(value, allowed[key]):
                problems.append(f"{where}.{key}: {value!r} has the wrong type")

    for key in config:
        if key not in ("general", "datasets"):
            problems.append(f"extra keys not allowed @ data[{key!r}]")
    if "general" in config:
        check(config["general"], GENERAL_KEYS, "general")
    datasets = config.get("datasets", [])
    if not isinstance(datasets, list):
        return [*problems, "datasets: not a list"]
    for i, dataset in enumerate(datasets):
        check(dataset, DATASET_KEYS, f"datasets[{i}]", nested={"subsets": None})
        for j, subset in enumerate(dataset.get("subsets", []) if isinstance(dataset, dict) else []):
            check(subset, SUBSET_KEYS, f"datasets[{i}].subsets[{j}]")
            if isinstance(subset, dict) and "image_dir" not in subset:
                problems.append(f"datasets[{i}].subsets[{j}]: required key not provided @ image_dir")
    return problems


def test_the_schema_check_rejects_what_sd_scripts_rejects():
    assert sd_scripts_problems({"schema_version": 1, "general": {}}) == [
        "extra keys not allowed @ data['schema_version']"
    ]
    assert sd_scripts_problems({"general": {"shuffle_caption": 1}})  # an int is not a bool
    assert sd_scripts_problems({"general": {"resolution": [1024, 1024], "caption_tag_dropout_rate": 0}}) == []
    assert sd_scripts_problems({"datasets": [{"subsets": [{"num_repeats": 2}]}]})  # image_dir is required
    assert sd_scripts_problems({"datasets": [{"subsets": [{"image_dir": "x", "max_token_length": 225}]}]})


def test_sd_scripts_config_text_holds_the_cards_settings_and_nothing_else():
    from trainer_core.dataset.sd_scripts_config import sd_scripts_dataset_text

    config = tomllib.loads(sd_scripts_dataset_text("3_kxl", 3))
    assert sd_scripts_problems(config) == []
    assert config["general"] == {
        "shuffle_caption": True, "caption_extension": ".txt", "keep_tokens": 0, "keep_tokens_separator": "|||",
        "caption_tag_dropout_rate": 0.1, "caption_dropout_rate": 0.0, "random_crop": False, "enable_bucket": True,
        "resolution": 1024, "min_bucket_reso": 256, "max_bucket_reso": 4096, "bucket_reso_steps": 64,
        "bucket_no_upscale": False,
    }  # fmt: skip
    assert config["datasets"] == [{"subsets": [{"image_dir": "3_kxl", "num_repeats": 3}]}]


@pytest.fixture(scope="module")
def built_dataset(tmp_path_factory) -> Path:
    from trainer_core.dataset.export import BuildOptions, build_dataset
    from trainer_core.dataset.selection import PRESETS
    from trainer_core.demo import init_demo

    root = tmp_path_factory.mktemp("sd-scripts")
    ws = init_demo(root / "ws", posts=60, seed=0, models=False)
    out = root / "ds"
    build_dataset(BuildOptions(db=ws.db_path, images=ws.images_path, out=out, plan=PRESETS["all"], repeats=2,
                               name="kxl"), workers=1)  # fmt: skip
    out.with_name("source").write_text(f"{ws.db_path}\n{ws.images_path}", encoding="utf-8")
    return out


def test_a_built_dataset_folder_trains_with_sd_scripts_unchanged(built_dataset):
    from trainer_core.dataset.stats import DATASET_FILE, SD_SCRIPTS_FILE, dataset_stats

    assert (DATASET_FILE, SD_SCRIPTS_FILE) == ("kxl-dataset.toml", "sd-scripts-dataset.toml")
    assert not (built_dataset / "dataset.toml").exists()  # the name sd-scripts users give their own configs
    ours = tomllib.loads((built_dataset / DATASET_FILE).read_text(encoding="utf-8"))
    assert ours["schema_version"] == 1 and sd_scripts_problems(ours)  # ours is not an sd-scripts config
    config = tomllib.loads((built_dataset / SD_SCRIPTS_FILE).read_text(encoding="utf-8"))
    assert sd_scripts_problems(config) == []
    (subset,) = config["datasets"][0]["subsets"]
    assert subset == {"image_dir": "2_kxl", "num_repeats": 2}
    images = [p for p in (built_dataset / subset["image_dir"]).iterdir() if p.suffix != ".txt"]
    assert images and all(p.with_suffix(config["general"]["caption_extension"]).is_file() for p in images)
    assert all("|||" in p.with_suffix(".txt").read_text(encoding="utf-8") for p in images)
    info, summary = dataset_stats(built_dataset)
    assert summary.written == len(images) and info["output"]["folder"] == "2_kxl"


def test_datasets_built_before_the_rename_are_still_read(built_dataset, tmp_path):
    from trainer_core.dataset.export import BuildOptions, build_dataset, partial_build_info
    from trainer_core.dataset.selection import PRESETS
    from trainer_core.dataset.stats import dataset_file, dataset_stats, is_finished_dataset
    from trainer_core.errors import KxlError

    old = tmp_path / "old"
    shutil.copytree(built_dataset, old)
    (old / "kxl-dataset.toml").rename(old / "dataset.toml")
    (old / "sd-scripts-dataset.toml").unlink()
    assert dataset_file(old) == old / "dataset.toml" and is_finished_dataset(old)
    assert dataset_stats(old)[1].written == dataset_stats(built_dataset)[1].written
    assert partial_build_info(old) is None
    db, images = built_dataset.with_name("source").read_text(encoding="utf-8").splitlines()
    with pytest.raises(KxlError, match=r"already holds a finished dataset \(dataset.toml\)"):
        build_dataset(BuildOptions(db=Path(db), images=Path(images), out=old, plan=PRESETS["all"]))
    # an sd-scripts config of that name is not taken for one of our builds
    (old / "dataset.toml").write_text("[general]\nshuffle_caption = true\n", encoding="utf-8")
    with pytest.raises(KxlError, match="not a Kohaku XL build description"):
        dataset_stats(old)


# -------------------------------------------------------------------------------- 7. TensorBoard files (reader)


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C computed bit by bit (independent of the writer's table)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c_bitwise(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: Path) -> list[bytes]:
    data = path.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert length_crc == _masked(header), f"length CRC mismatch at byte {pos}"
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert len(payload) == length and payload_crc == _masked(payload), f"data CRC mismatch at byte {pos}"
        records.append(payload)
        pos += 16 + length
    assert pos == len(data)
    return records


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, raw value) pairs of a protobuf message: ints, bytes, or 4/8-byte chunks."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, value))
    return fields


def decode_event(payload: bytes) -> dict[str, Any]:
    """tensorflow.Event: wall_time 1 (double), step 2 (int64), file_version 3, summary 5, session_log 6."""
    event: dict[str, Any] = {"step": 0, "scalars": {}}
    for number, value in decode_fields(payload):
        if number == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            event["step"] = value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for n, raw in decode_fields(value):
                assert n == 1
                parts = dict(decode_fields(raw))
                event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        elif number == 6:
            event["session_status"] = dict(decode_fields(value))[1]
    return event


def read_tensorboard_dir(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    events = []
    for path in files:
        decoded = [decode_event(r) for r in read_tfrecords(path)]
        assert decoded[0]["file_version"] == "brain.Event:2"
        events += decoded
    return events


def scalar_series(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        for tag, value in e["scalars"].items():
            series.setdefault(tag, []).append((e["step"], value))
    return series


def _accumulator_scalars(folder: Path) -> dict[str, list[tuple[int, float]]] | None:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_writer_files_read_back_with_valid_crcs(tmp_path):
    from trainer_core.train.tensorboard_writer import TensorBoardWriter, crc32c, masked_crc32c

    assert crc32c(b"123456789") == 0xE3069283 == _crc32c_bitwise(b"123456789")  # the CRC-32C check value
    assert masked_crc32c(b"") == _masked(b"")
    with TensorBoardWriter(tmp_path / "tb") as tb:
        tb.add_scalars(1, {"loss/current": 0.5, "lr/unet": 4e-5}, wall_time=1000.25)
        tb.add_scalar("loss/current", 0.25, 2, wall_time=1001.5)
        tb.add_scalars(3, {"loss/current": float("nan"), "grad_norm": 1e6})
        tb.add_scalars(300_000_000_000, {"loss/current": -1.0})  # int64 steps beyond 32 bits
    events = read_tensorboard_dir(tmp_path / "tb")
    assert events[0]["step"] == 0 and events[0]["scalars"] == {}
    assert (
        events[1]["session_status"] == 1 and events[1]["step"] == 1
    )  # START: older points past it are dropped
    assert events[2]["wall_time"] == 1000.25
    series = scalar_series(events)
    assert series["lr/unet"] == [(1, pytest.approx(4e-5))]
    loss = series["loss/current"]
    assert [s for s, _ in loss] == [1, 2, 3, 300_000_000_000]
    assert loss[0][1] == 0.5 and loss[1][1] == 0.25 and loss[2][1] != loss[2][1] and loss[3][1] == -1.0
    assert series["grad_norm"] == [(3, 1e6)]
    read_by_tensorboard = _accumulator_scalars(tmp_path / "tb")
    if read_by_tensorboard is not None:
        assert read_by_tensorboard["lr/unet"] == [(1, pytest.approx(4e-5))]
        assert [s for s, _ in read_by_tensorboard["loss/current"]] == [1, 2, 3, 300_000_000_000]


def test_event_writer_mirrors_step_events_only_when_asked(tmp_path):
    from trainer_core.train.config import TrainConfig
    from trainer_core.train.events import EventWriter, read_events

    cfg = TrainConfig()
    assert cfg.output.tensorboard is False
    fingerprint = cfg.resume_fingerprint()
    cfg.output.tensorboard = True
    assert cfg.resume_fingerprint() == fingerprint  # [output] never blocks a resume

    off = tmp_path / "off"
    off.mkdir()
    (off / "config.toml").write_text(TrainConfig().to_toml(), encoding="utf-8")
    writer = EventWriter(off)
    writer.emit("step", 1, loss=0.5, lr={"unet": 1e-4})
    writer.close()
    assert not (off / "tensorboard").exists()

    on = tmp_path / "on"
    on.mkdir()
    (on / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    writer = EventWriter(on)  # tensorboard=None: follows the run's config.toml
    writer.emit("status", 0, message="starting")
    writer.emit("step", 1, loss=0.5, lr={"unet": 1e-4, "textencoder": 2e-5}, grad_norm=0.7, images_per_s=3.5)
    writer.emit("step", 2, loss=float("inf"), lr={"unet": 2e-4, "textencoder": 4e-5}, grad_norm=None,
                images_per_s=None, loss_scale=32768.0, skipped=True)  # fmt: skip
    writer.emit("save", 2, path="x")
    writer.close()
    assert [e["type"] for e in read_events(on)] == ["status", "step", "step", "save"]
    series = scalar_series(read_tensorboard_dir(on / "tensorboard"))
    assert series["loss/current"][0] == (1, 0.5) and series["loss/current"][1] == (2, float("inf"))
    assert series["lr/unet"] == [(1, pytest.approx(1e-4)), (2, pytest.approx(2e-4))]
    assert series["lr/textencoder"] == [(1, pytest.approx(2e-5)), (2, pytest.approx(4e-5))]
    assert series["grad_norm"] == [(1, pytest.approx(0.7))] and series["images_per_s"] == [(1, 3.5)]
    assert series["loss_scale"] == [(2, 32768.0)]


# -------------------------------------------------------------------------------- 4 + 7 + 1: real processes

HUB_NOISE = ("publisher trust", "kernels-community")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("KXL_ALLOW_HUB_KERNELS", None)
    return env


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return write_train_squares(tmp_path_factory.mktemp("edges-assets"))


@pytest.fixture(scope="module")
def awkward_lokr(tmp_path_factory) -> Path:
    from trainer_core.lokr.keys import module_targets
    from trainer_core.models.tiny import build_tiny_components

    comps = build_tiny_components(0)
    target = next(
        t
        for t in module_targets("kxl-tiny").values()
        if t.weight.diffusers_key.endswith("attn2.to_out.0.weight")
    )
    o, i = comps.unet.get_parameter(target.weight.diffusers_key).shape
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("lokr") / "style, v2 (test).safetensors"
    save_file({f"{target.name}.lokr_w1": torch.randn(2, 2, generator=g) * 0.1,
               f"{target.name}.lokr_w2": torch.randn(o // 2, i // 2, generator=g) * 0.1}, str(path))  # fmt: skip
    return path


def test_kxl_generate_output_has_no_hub_kernel_lines_and_a1111_readable_lora_hashes(
    squares, awkward_lokr, tmp_path
):
    from trainer_core.hashing import safetensors_payload_hash

    base, _ = squares
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer_core.cli", "generate", "--model", str(base), "--prompt", "1girl, solo",
         "--lokr", f"{awkward_lokr}:0.5", "--steps", "1", "--size", "64x64", "--seed", "1", "--out", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in HUB_NOISE:
        assert noise not in proc.stdout and noise not in proc.stderr, (noise, proc.stderr[-3000:])
    params = parse_infotext(read_png_parameters(out / "00000-1.png"))
    assert params["Prompt"] == "1girl, solo <lora:style v2 (test):0.5>"
    digest = safetensors_payload_hash(awkward_lokr)
    assert a1111_paste_lora_hashes(params["Lora hashes"]) == {"style v2 (test)": digest}
    assert a1111_paste_lora_hashes_code_rule(params["Lora hashes"]) == {"style v2 (test)": digest}


def test_trainer_output_has_no_hub_kernel_lines_and_tensorboard_files_match_events(squares, tmp_path):
    from trainer_core.train.config import load_preset
    from trainer_core.train.events import read_events

    base, dataset = squares
    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = str(base), str(dataset)
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 1, 1
    cfg.training.save_every_n_steps, cfg.training.sample_every, cfg.training.max_steps = 0, 0, 3
    cfg.training.mixed_precision = "fp16"  # CPU GradScaler: the steps carry loss_scale
    cfg.output.tensorboard = True
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "trainer_core.train", str(run / "config.toml")], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in HUB_NOISE:
        assert noise not in proc.stdout and noise not in proc.stderr, (noise, proc.stderr[-3000:])
        assert noise not in (run / "events.jsonl").read_text(encoding="utf-8")
    steps = [e for e in read_events(run) if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    series = scalar_series(read_tensorboard_dir(run / "tensorboard"))
    assert series["loss/current"] == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in steps]
    assert series["grad_norm"] == [(e["step"], pytest.approx(e["grad_norm"], rel=1e-6)) for e in steps]
    assert series["loss_scale"] == [(e["step"], e["loss_scale"]) for e in steps]
    for group in steps[0]["lr"]:
        assert series[f"lr/{group}"] == [(e["step"], pytest.approx(e["lr"][group], rel=1e-6, abs=1e-30))
                                         for e in steps]  # fmt: skip
    assert [s for s, _ in series["images_per_s"]] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["state"] == "done"
