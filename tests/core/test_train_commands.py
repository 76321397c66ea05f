""" "Sample now" / "Save now": the `commands/sample` and `commands/save` files a GUI drops into a running run.

The trainer runs in this process; a wrapper around `Trainer._micro_loss` drops the command file while step 2 is
being computed, the moment a user would click the button. The trainer must serve it after that step (a sample
image + "sample" event, or a LoKr + state + "save" event, all at step 2), delete the file once served, and go on
training exactly as it would have without the command.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")  # what `python -m trainer_core.train` sets

from support import write_train_squares  # noqa: E402 - tests/ is on sys.path

from trainer_core.train.config import load_preset  # noqa: E402
from trainer_core.train.events import COMMAND_FILES, read_events, request_command  # noqa: E402

STEPS = 3
AT = 2  # the step during which the command arrives
PROMPTS = ["1girl, yellow square", "1girl, red circle"]
SEED = 1337  # the tiny-demo preset's training.seed, also the sample seed


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny base checkpoint and a two-image 64 px kohya dataset (captions with a `|||` head)."""
    return write_train_squares(tmp_path_factory.mktemp("train-commands-assets"))


def _config(run_dir: Path, base: Path, dataset: Path, prompts: list[str]) -> Path:
    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = str(base), str(dataset)
    cfg.dataset.resolution = 64
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 1, 1
    cfg.training.max_steps, cfg.training.save_every_n_steps = STEPS, 0
    cfg.training.sample_every, cfg.training.sample_prompts, cfg.training.sample_steps = 0, prompts, 3
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    return path


def _train(config: Path, command: str | None = None) -> int:
    """Run the trainer in this process, dropping `command` while step AT is computed."""
    from trainer_core.train.loop import Trainer

    run_dir = config.parent
    original = Trainer._micro_loss
    dropped: list[int] = []

    def micro_loss(self, entry_ids, epoch, micro):
        if command is not None and self.step == AT - 1 and not dropped:
            request_command(run_dir, command)
            dropped.append(self.step)
        return original(self, entry_ids, epoch, micro)

    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_micro_loss", micro_loss)
        try:
            code = Trainer(config).run()
        finally:
            signal.signal(signal.SIGTERM, sigterm)  # the trainer installs its own handler
    assert command is None or dropped == [AT - 1]
    return code


def _index(events: list[dict], type_: str, step: int) -> int:
    return next(i for i, e in enumerate(events) if e["type"] == type_ and e["step"] == step)


def _finished(run_dir: Path) -> dict:
    events = read_events(run_dir)
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, STEPS + 1))
    done = events[-1]
    assert done["type"] == "done" and done["reason"] == "finished" and done["final_step"] == STEPS
    return done


@pytest.fixture(scope="module")
def baseline(assets, tmp_path_factory):
    """The same run without any command: its losses and final weights."""
    base, dataset = assets
    run = tmp_path_factory.mktemp("train-commands-baseline")
    assert _train(_config(run, base, dataset, PROMPTS)) == 0
    events = read_events(run)
    assert not any(e["type"] == "sample" for e in events)  # sample_every = 0: no samples unless asked
    return {
        "losses": [e["loss"] for e in events if e["type"] == "step"],
        "digests": _finished(run)["param_digests"],
    }


def test_sample_now_renders_the_prompts_after_the_current_step(assets, baseline, tmp_path):
    from PIL import Image

    base, dataset = assets
    run = tmp_path / "run"
    assert _train(_config(run, base, dataset, PROMPTS), "sample") == 0
    events = read_events(run)
    samples = [e for e in events if e["type"] == "sample"]
    assert [(e["step"], e["index"], e["prompt"]) for e in samples] == [
        (AT, 0, PROMPTS[0]),
        (AT, 1, PROMPTS[1]),
    ]
    expected = [run / "samples" / f"step{AT:08d}-{i:02d}-{SEED}.png" for i in range(len(PROMPTS))]
    assert [Path(e["path"]) for e in samples] == expected
    assert sorted((run / "samples").iterdir()) == expected  # rendered once, not again at later steps
    for path in expected:
        with Image.open(path) as im:
            assert im.size == (64, 64)
    # After step AT's optimizer step, before step AT+1 begins.
    first, last = events.index(samples[0]), events.index(samples[-1])
    assert _index(events, "step", AT) < first and last < _index(events, "step", AT + 1)
    assert not (run / COMMAND_FILES["sample"]).exists()  # served, so the GUI sees the request done
    done = _finished(run)
    # Rendering between steps leaves the training untouched.
    assert [e["loss"] for e in events if e["type"] == "step"] == baseline["losses"]
    assert done["param_digests"] == baseline["digests"]


def test_sample_now_without_prompts_says_so_and_consumes_the_request(assets, tmp_path):
    base, dataset = assets
    run = tmp_path / "run"
    assert _train(_config(run, base, dataset, []), "sample") == 0
    events = read_events(run)
    notes = [e for e in events if e["type"] == "status" and "sample_prompts is empty" in e["message"]]
    assert [(e["step"], e["message"]) for e in notes] == [
        (AT, "sample requested, but training.sample_prompts is empty")
    ]
    assert not any(e["type"] == "sample" for e in events)
    assert list((run / "samples").iterdir()) == []
    assert not (run / COMMAND_FILES["sample"]).exists()
    _finished(run)


def test_save_now_writes_a_lokr_and_a_state_at_the_current_step(assets, baseline, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from trainer_core.train.checkpoint import read_train_state

    base, dataset = assets
    run = tmp_path / "run"
    assert _train(_config(run, base, dataset, PROMPTS), "save") == 0
    events = read_events(run)
    saves = [e for e in events if e["type"] == "save"]
    checkpoints = run / "checkpoints"
    lokr, state = checkpoints / f"tiny-demo-lokr-step{AT:08d}.safetensors", checkpoints / f"state-{AT:08d}"
    assert [(e["step"], e["reason"], e["final"]) for e in saves] == [(AT, "requested", False),
                                                                     (STEPS, "final", True)]  # fmt: skip
    assert (Path(saves[0]["path"]), Path(saves[0]["state"])) == (lokr, state)
    assert _index(events, "step", AT) < events.index(saves[0]) < _index(events, "step", AT + 1)
    assert lokr.is_file() and state.is_dir()
    with safe_open(str(lokr), "pt") as fh:
        assert fh.metadata()["ss_steps"] == str(AT)
    info = read_train_state(state)
    assert (info.step, info.samples_seen) == (AT, AT)
    # The step-AT file holds the weights of step AT, not a copy of the final ones.
    early = load_file(str(lokr))
    final = load_file(str(checkpoints / "tiny-demo-lokr.safetensors"))
    assert early.keys() == final.keys()
    assert any(not early[k].equal(final[k]) for k in early)
    assert not (run / COMMAND_FILES["save"]).exists()
    done = _finished(run)
    assert done["param_digests"] == baseline["digests"]  # saving does not disturb the training


def test_commands_left_from_an_earlier_launch_are_not_served(assets, tmp_path):
    base, dataset = assets
    run = tmp_path / "run"
    config = _config(run, base, dataset, PROMPTS)
    for name in ("sample", "save"):
        request_command(run, name)
    assert _train(config) == 0
    events = read_events(run)
    assert not any(e["type"] == "sample" for e in events)
    assert [(e["step"], e["reason"]) for e in events if e["type"] == "save"] == [(STEPS, "final")]
    assert not any((run / COMMAND_FILES[name]).exists() for name in ("sample", "save"))
    _finished(run)
