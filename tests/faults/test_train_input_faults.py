"""#17.10: bad training input fails at once with a message naming the key or file, never hours later or as a
traceback: non-finite or out-of-range settings, a caption that is not UTF-8, a disk that fills up mid-run."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_tiny_run_config, write_train_squares

from trainer_core.errors import KxlError
from trainer_core.train.config import load_config, load_preset
from trainer_core.train.data import scan_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_train_squares(tmp_path_factory.mktemp("input-fault-assets"))


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("training", "seed = 100000000000000000000", "training.seed"),
        ("training", "seed = -1", "training.seed"),
        ("dataset", "keep_tokens = -3", "dataset.keep_tokens"),
        ("optimizer", "unet_lr = inf", "optimizer.unet_lr"),
        ("optimizer", "text_encoder_lr = nan", "optimizer.text_encoder_lr"),
        ("training", "noise_offset = inf", "training.noise_offset"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_key(tmp_path, section, line, key):
    text = load_preset("tiny-demo").to_toml()
    name = line.split(" = ")[0]
    lines = [ln for ln in text.splitlines() if not ln.startswith(f"{name} = ")]
    at = lines.index(f"[{section}]")
    lines.insert(at + 1, line)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(KxlError) as info:
        load_config(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_a_caption_that_is_not_utf8_names_its_file(tmp_path):
    sub = tmp_path / "ds" / "1_x"
    sub.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 64)).save(sub / "a.png")
    (sub / "a.txt").write_bytes("1girl, caf\u00e9".encode("latin-1"))
    with pytest.raises(KxlError) as info:
        scan_dataset(tmp_path / "ds")
    assert str(sub / "a.txt") in str(info.value) and "UTF-8" in str(info.value)


def _limit_file_size() -> (
    None
):  # in the child: files may not grow past 300 KB, and writes fail instead of killing
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_disk_full_while_saving_names_the_file_and_keeps_no_half_state(assets, tmp_path):
    run = tmp_path / "run"
    write_tiny_run_config(run, *assets, max_steps=2, save_every_n_steps=1)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "trainer_core.train", str(run / "config.toml")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and "the disk is full" in error[0] and str(run / "checkpoints") in error[0]
    assert "Traceback" not in proc.stderr
    leftovers = [p.name for p in (run / "checkpoints").iterdir()]
    assert not [n for n in leftovers if n.startswith(".") or n.startswith("state-")], leftovers
