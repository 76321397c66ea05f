"""Hostile and faulty merge inputs, and merges that collide or were killed (issue #17 items 6 and 11).

Every file here is written by hand (8-byte little-endian header length + JSON + data), so each test controls the
exact header a downloaded file could carry. The base checkpoint is the smallest one the merge accepts as kxl-tiny
SDXL: the fingerprint keys plus one attention weight and one norm a LoKr can patch.
"""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from trainer_core.cli import build_parser, main
from trainer_core.errors import CheckpointError
from trainer_core.merge.engine import plan_merge
from trainer_core.merge.recipe import MergeRecipe
from trainer_core.models.architectures import CONV_IN_KEY, TE1_TOKEN_KEY, TE2_TOKEN_KEY
from trainer_core.models.safetensors_header import read_header
from trainer_core.models.sdxl_layout import UNET_PREFIX, VAE_PREFIX
from trainer_core.ownership import acquire, read_owner

Q_KEY = UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"  # (64, 64) linear
NORM_W = UNET_PREFIX + "input_blocks.4.1.norm.weight"
NORM_B = UNET_PREFIX + "input_blocks.4.1.norm.bias"
Q_MODULE = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
NORM_MODULE = "lora_unet_input_blocks_4_1_norm"
BASE_SHAPES = {
    CONV_IN_KEY: (32, 4, 3, 3),
    TE1_TOKEN_KEY: (16, 32),
    TE2_TOKEN_KEY: (16, 48),
    VAE_PREFIX + "decoder.conv_in.weight": (8, 4, 3, 3),
    Q_KEY: (64, 64),
    NORM_W: (64,),
    NORM_B: (64,),
}


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], mutate: Callable[[dict], None] | None = None,
                      metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Lay `arrays` out back to back, let `mutate` edit the header dict, write header length + JSON + data."""
    st = {np.dtype("float16"): "F16", np.dtype("float32"): "F32"}
    header: dict = {"__metadata__": metadata} if metadata else {}
    data = bytearray()
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": st[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}  # fmt: skip
        data += raw
    if mutate is not None:
        mutate(header)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(data))
    return path


def write_base(path: Path, seed: int = 0, mutate: Callable[[dict], None] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {k: (rng.standard_normal(s) * 0.1).astype(np.float16) for k, s in BASE_SHAPES.items()}
    return write_safetensors(path, arrays, mutate)


def write_lokr(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    rng = np.random.default_rng(1)
    arrays = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in tensors.items()}
    return write_safetensors(path, arrays, metadata={"ss_base_model_version": "sdxl_base_v1-0"})


def assert_one_error(capsys, *fragments: str) -> str:
    """The CLI ended with one `error:` line (plus optional `  hint:` lines), no traceback, holding every fragment.
    Progress stage lines may precede it (they go to stderr too)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, err
    assert all(line.startswith("  hint: ") for line in lines[starts[0] + 1 :]), err
    for fragment in fragments:
        assert fragment in lines[starts[0]], (fragment, err)
    return lines[starts[0]]


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- item 6: safetensors headers are validated entry by entry ------------------------------------------------


def _shift_first(h: dict) -> None:
    begin, end = h[CONV_IN_KEY]["data_offsets"]
    h[CONV_IN_KEY]["data_offsets"] = [begin - 16, end - 16]  # starts inside the JSON header


def _overlap(h: dict) -> None:
    h[NORM_B]["data_offsets"] = list(h[NORM_W]["data_offsets"])


def _overlap_partly(h: dict) -> None:
    begin, end = h[NORM_W]["data_offsets"]
    h[NORM_B]["data_offsets"] = [begin + 64, end + 64]


def _dtype_wider(h: dict) -> None:
    h[NORM_W]["dtype"] = "F32"  # 64 x 4 bytes claimed, 128 stored


def _dtype_unknown(h: dict) -> None:
    h[NORM_W]["dtype"] = "F12"


def _dtype_not_text(h: dict) -> None:
    h[NORM_W]["dtype"] = ["F16"]


def _negative_shape(h: dict) -> None:
    h[Q_KEY]["shape"] = [-64, -64]  # numel 4096 = the stored bytes / 2


def _fractional_offsets(h: dict) -> None:
    begin, end = h[NORM_W]["data_offsets"]
    h[NORM_W]["data_offsets"] = [begin + 0.5, end + 0.5]


def _begin_after_end(h: dict) -> None:
    begin, end = h[NORM_W]["data_offsets"]
    h[NORM_W]["data_offsets"] = [end, begin]
    h[NORM_W]["shape"] = [-64]  # so that end - begin == numel * itemsize


def _metadata_not_a_table(h: dict) -> None:
    h["__metadata__"] = ["kxl"]


HOSTILE = {
    "negative offset": (_shift_first, [CONV_IN_KEY, "offset"]),
    "overlapping tensors": (_overlap, [NORM_B, NORM_W, "overlap"]),
    "partly overlapping tensors": (_overlap_partly, [NORM_B, NORM_W, "overlap"]),
    "dtype disagrees with size": (_dtype_wider, [NORM_W, "F32"]),
    "unknown dtype": (_dtype_unknown, [NORM_W, "F12"]),
    "dtype not a string": (_dtype_not_text, [NORM_W, "dtype"]),
    "negative shape": (_negative_shape, [Q_KEY, "shape"]),
    "fractional offsets": (_fractional_offsets, [NORM_W, "offset"]),
    "begin after end": (_begin_after_end, [NORM_W]),
    "metadata not a table": (_metadata_not_a_table, ["__metadata__"]),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_header_is_refused_naming_file_and_key(tmp_path, capsys, case):
    mutate, fragments = HOSTILE[case]
    good = write_base(tmp_path / "good.safetensors")
    bad = write_base(tmp_path / "hostile.safetensors", seed=1, mutate=mutate)
    with pytest.raises(CheckpointError, match="hostile.safetensors"):
        read_header(bad)
    out = tmp_path / "out.safetensors"
    rc = main(["merge", "--a", str(good), "--b", str(bad), "--out", str(out)])
    assert rc == 2
    assert_one_error(capsys, "hostile.safetensors", *fragments)
    assert leftovers(tmp_path, {"good.safetensors", "hostile.safetensors"}) == []


def test_valid_handmade_files_still_merge(tmp_path, capsys):
    """The control for the cases above: the same writer without a mutation merges, including a gap between
    tensors (aligned writers leave padding) and a zero-size tensor."""

    def gap_and_empty(h: dict) -> None:
        for name in (Q_KEY, NORM_W, NORM_B):  # the last three tensors: move them 64 bytes on
            begin, end = h[name]["data_offsets"]
            h[name]["data_offsets"] = [begin + 64, end + 64]
        h[UNET_PREFIX + "empty"] = {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]}

    a = write_base(tmp_path / "a.safetensors")
    b = tmp_path / "b.safetensors"
    write_base(b, seed=1, mutate=gap_and_empty)
    b.write_bytes(b.read_bytes() + bytes(64))  # the data section grew by the gap
    assert len(read_header(b).tensors) == len(BASE_SHAPES) + 1
    rc = main(["merge", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "o.safetensors")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o.safetensors").is_file()


# -- item 6: a LoKr whose shapes do not fit its layer --------------------------------------------------------

BAD_LOKRS = {
    # w1 (8, 4) x w2 (8, 16) is (64, 64); a transposed w1 gives (32, 128), the same number of elements
    "transposed w1": ({"lokr_w1": (4, 8), "lokr_w2": (8, 16)}, Q_MODULE, ["(64, 64)", "(32, 128)"]),
    "kron of the wrong size": ({"lokr_w1": (4, 4), "lokr_w2": (8, 8)}, Q_MODULE, ["(64, 64)", "(32, 32)"]),
    "low-rank factors that do not chain": (
        {"lokr_w1": (8, 8), "lokr_w2_a": (8, 4), "lokr_w2_b": (3, 8), "alpha": ()}, Q_MODULE,
        ["lokr_w2_a", "lokr_w2_b", "(8, 4)", "(3, 8)"]),
    "tucker core that does not chain": (
        {"lokr_w1": (8, 8), "lokr_w2_a": (3, 8), "lokr_w2_b": (2, 8), "lokr_t2": (3, 3, 1, 1)}, Q_MODULE,
        ["lokr_t2", "(3, 3, 1, 1)", "(2, 8)"]),
    "w1 missing": ({"lokr_w2": (8, 16)}, Q_MODULE, ["lokr_w1"]),
    "norm of the wrong size": ({"w_norm": (63,), "b_norm": (64,)}, NORM_MODULE, ["(64,)", "(63,)"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_LOKRS), ids=list(BAD_LOKRS))
def test_lokr_that_does_not_fit_is_refused_at_plan_time(tmp_path, capsys, case):
    shapes, module, fragments = BAD_LOKRS[case]
    base = write_base(tmp_path / "base.safetensors")
    lokr = write_lokr(tmp_path / "odd-lokr.safetensors", {f"{module}.{k}": s for k, s in shapes.items()})
    recipe = MergeRecipe("copy", [str(base)], lokr=[(str(lokr), 1.0)])
    with pytest.raises(CheckpointError, match="odd-lokr.safetensors"):
        plan_merge(recipe)
    out = tmp_path / "baked.safetensors"
    rc = main(["merge", "--a", str(base), "--lokr", f"{lokr}:1.0", "--out", str(out)])
    assert rc == 2
    assert_one_error(capsys, "odd-lokr.safetensors", module, *fragments)
    assert leftovers(tmp_path, {"base.safetensors", "odd-lokr.safetensors"}) == []


def test_lokr_that_fits_still_bakes(tmp_path, capsys):
    base = write_base(tmp_path / "base.safetensors")
    lokr = write_lokr(tmp_path / "fine.safetensors", {
        f"{Q_MODULE}.lokr_w1": (8, 4), f"{Q_MODULE}.lokr_w2_a": (8, 2), f"{Q_MODULE}.lokr_w2_b": (2, 16),
        f"{Q_MODULE}.alpha": (), f"{NORM_MODULE}.w_norm": (64,), f"{NORM_MODULE}.b_norm": (64,)})  # fmt: skip
    rc = main(["merge", "--a", str(base), "--lokr", f"{lokr}:1.0", "--out", str(tmp_path / "o.safetensors")])
    assert rc == 0, capsys.readouterr().err
    assert "baked fine: 2 modules" in capsys.readouterr().out


# -- item 11(c): the pickle hint names a command that exists -------------------------------------------------


def test_pickle_hint_names_a_real_command(tmp_path, capsys):
    good = write_base(tmp_path / "good.safetensors")
    ckpt = tmp_path / "old model.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")
    rc = main(["merge", "--a", str(good), "--b", str(ckpt), "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pickle" in err
    command = err.split("`")[1]  # the hint quotes one command line
    assert err.count("--allow-pickle") == command.count("--allow-pickle")  # no flag offered to `kxl merge`
    argv = shlex.split(command)
    assert argv[:3] == ["kxl", "model", "convert"] and argv[3] == str(ckpt)
    args = build_parser().parse_args(argv[1:])  # the suggested command parses as written
    assert args.allow_pickle and args.func.__name__ == "run_convert"
    assert Path(args.dst).suffix == ".safetensors"


# -- item 11(a, b): one merge per output; a killed merge's leftovers are cleaned -----------------------------


def _lock(out: Path) -> Path:
    return out.parent / f".{out.name}.kxl-lock"


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path, Path]:
    a, b = write_base(tmp_path / "a.safetensors"), write_base(tmp_path / "b.safetensors", seed=1)
    return a, b, tmp_path / "o.safetensors"


def test_second_merge_into_the_same_output_is_refused(pair, capsys):
    a, b, out = pair
    part = out.parent / f".{out.name}.live0001.part"  # the live merge's temp file: not ours to delete
    part.write_bytes(bytes(100))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        acquire(_lock(out), "merge", pid=child.pid)
        rc = main(["merge", "--a", str(a), "--b", str(b), "--out", str(out)])
        assert rc == 2
        assert_one_error(capsys, f"merge is already running (pid {child.pid})", str(out))
        assert not out.exists() and part.exists()
        assert read_owner(_lock(out)).pid == child.pid  # the other merge keeps its lock
    finally:
        child.kill()
        child.wait()
    # the owner is gone: its lock is stale and the next merge takes over (and clears its leftovers)
    assert main(["merge", "--a", str(a), "--b", str(b), "--out", str(out)]) == 0
    assert out.is_file() and not part.exists() and not _lock(out).exists()


def test_merge_holds_the_output_lock_while_writing(pair):
    from trainer_core.merge.engine import run_merge
    from trainer_core.progress import Progress

    a, b, out = pair
    seen = []
    recipe = MergeRecipe("weighted_sum", [str(a), str(b)], weights=[0.5, 0.5])

    def on_event(ev) -> None:
        if ev.total:  # the writing stage
            seen.append(read_owner(_lock(out)))

    run_merge(recipe, out, progress=Progress(callback=on_event, min_interval_s=0))
    assert seen and all(o is not None and (o.pid, o.what) == (os.getpid(), "merge") for o in seen)
    assert not _lock(out).exists()


def test_killed_merge_leftovers_are_removed_by_the_next_merge(pair, capsys):
    a, b, out = pair
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    acquire(_lock(out), "merge", pid=dead.pid)  # the killed merge's lock ...
    stale = out.parent / f".{out.name}.k1ll3d_x.part"  # ... and its half-written output
    stale.write_bytes(bytes(64 * 1024))
    other = out.parent / f".{out.name}.v2.safetensors.abcd1234.part"  # another output's temp file
    other.write_bytes(b"x")
    rc = main(["merge", "--a", str(a), "--b", str(b), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert not stale.exists() and other.exists() and out.is_file() and not _lock(out).exists()
    assert "interrupted merge" in capsys.readouterr().out


def test_inputs_with_identical_contents_merge(tmp_path, capsys):
    """Two inputs with the same bytes share one SHA-256: the recipe's hash table then has one entry fewer than
    the placeholder header written first, which used to end in 'merge header changed size' (a traceback)."""
    from safetensors.numpy import load_file

    a = write_base(tmp_path / "a.safetensors")
    twin = tmp_path / "a-copy.safetensors"
    twin.write_bytes(a.read_bytes())
    out = tmp_path / "o.safetensors"
    assert main(["merge", "--a", str(a), "--b", str(twin), "--out", str(out)]) == 0, capsys.readouterr().err
    assert main(["merge", "--a", str(a), "--b", str(a), "--out", str(tmp_path / "same.safetensors")]) == 0
    merged, original = load_file(str(out)), load_file(str(a))
    assert merged.keys() == original.keys() and all((merged[k] == original[k]).all() for k in merged)
    assert len(json.loads(read_header(out).metadata["sd_merge_models"])) == 1


def test_input_dtype_the_merge_cannot_read_is_named(tmp_path, capsys):
    """U16/U32/U64 are valid safetensors dtypes with no torch counterpart the merge reads or writes."""

    def as_u16(h: dict) -> None:
        h[NORM_W]["dtype"] = "U16"

    a = write_base(tmp_path / "a.safetensors")
    odd = write_base(tmp_path / "odd.safetensors", seed=1, mutate=as_u16)
    assert read_header(odd).tensors[NORM_W].dtype == "U16"  # a well-formed header ...
    rc = main(["merge", "--a", str(a), "--b", str(odd), "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2  # ... that the merge refuses by name instead of a KeyError
    assert_one_error(capsys, "odd.safetensors", NORM_W, "U16")


def test_second_merge_into_the_same_output_from_this_process_is_refused(pair):
    """The lock file is re-entrant per process, so two GUI jobs into one file need the in-process guard too."""
    from trainer_core.merge.engine import run_merge
    from trainer_core.ownership import AlreadyRunning
    from trainer_core.progress import Progress

    a, b, out = pair
    recipe = MergeRecipe("weighted_sum", [str(a), str(b)], weights=[0.5, 0.5])
    refused: list[AlreadyRunning] = []

    def on_event(ev) -> None:  # while the first merge writes, a second one into the same file starts
        if ev.total and not refused:
            with pytest.raises(AlreadyRunning, match=rf"already running \(pid {os.getpid()}") as e:
                run_merge(recipe, out)
            refused.append(e.value)

    run_merge(recipe, out, progress=Progress(callback=on_event, min_interval_s=0))
    assert refused and out.is_file() and not _lock(out).exists()
    assert leftovers(out.parent, {"a.safetensors", "b.safetensors", "o.safetensors"}) == []
