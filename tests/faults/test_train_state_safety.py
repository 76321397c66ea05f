"""#17.3: a training state is data only; `--resume` never executes anything read from a run folder."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from trainer_core.errors import KxlError
from trainer_core.train.checkpoint import TrainState, load_train_state, save_train_state


class Payload:
    """Pickles into a call of os.system: what a hostile run folder would plant."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    import bitsandbytes as bnb

    opt = bnb.optim.Lion8bit(net.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=1.0, min_8bit_size=16)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**15, growth_interval=3)
    return net, opt, scaler


def _step(net, opt):
    loss = net(torch.randn(16, 8)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def _same(a, b) -> bool:
    """Deep equality over dicts/lists/tuples whose leaves may be tensors (same dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _save(tmp_path, net, opt, scaler):
    state = TrainState(step=7, epoch=1, samples_seen=28, fingerprint="abc", world_size=2)
    return save_train_state(tmp_path / "checkpoints", state, net.state_dict(), opt, scaler)


def test_state_round_trips_as_data_only(tmp_path):
    net, opt, scaler = _parts()
    for _ in range(3):
        _step(net, opt)
    scaler.scale(torch.ones(()))
    scaler.update(1024.0)  # a non-default scale/tracker so the round trip is not trivially the defaults
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    folder = _save(tmp_path, net, opt, scaler)
    assert not list(folder.glob("*.pt")), "no pickles in a state folder"
    expected_next = (torch.rand(3), np.random.rand(3), random.random())

    net2, opt2, scaler2 = _parts(seed=1)
    _step(net2, opt2)  # different params and optimizer contents
    st = load_train_state(folder, net2, opt2, scaler2)
    assert (st.step, st.epoch, st.samples_seen, st.world_size) == (7, 1, 28, 2)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert _same(s1["state"], s2["state"])
    assert scaler2.state_dict() == scaler.state_dict()
    got_next = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got_next[0], expected_next[0]) and np.array_equal(got_next[1], expected_next[1])
    assert got_next[2] == expected_next[2]
    # training continues identically from the restored optimizer
    torch.manual_seed(11)
    _step(net, opt)
    torch.manual_seed(11)
    _step(net2, opt2)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["rng", "optimizer", "scaler"])
def test_planted_pickle_is_refused_and_never_runs(tmp_path, name):
    net, opt, scaler = _parts()
    _step(net, opt)
    folder = _save(tmp_path, net, opt, scaler)
    marker = tmp_path / "pwned"
    # an older-format folder (no .json) with a payload in the pickle
    (folder / f"{name}.json").unlink()
    (folder / f"{name}.safetensors").unlink(missing_ok=True)
    torch.save({"torch": Payload(marker), "state": {}, "param_groups": []}, folder / f"{name}.pt")
    with pytest.raises(KxlError, match=f"{name}.pt.*refusing to load"):
        load_train_state(folder, *_parts())
    assert not marker.exists(), "the payload ran"


def test_a_pickle_beside_the_data_files_is_never_read(tmp_path):
    net, opt, scaler = _parts()
    folder = _save(tmp_path, net, opt, scaler)
    marker = tmp_path / "pwned"
    for name in ("rng", "optimizer", "scaler"):
        torch.save(Payload(marker), folder / f"{name}.pt")
    load_train_state(folder, *_parts())
    assert not marker.exists()


def test_states_of_older_versions_still_resume(tmp_path):
    """A state folder written by the pickle format (plain tensors, numbers and numpy's RNG array) still loads."""
    net, opt, scaler = _parts()
    _step(net, opt)
    folder = _save(tmp_path, net, opt, scaler)
    for name in ("optimizer", "scaler", "rng"):
        (folder / f"{name}.json").unlink()
        (folder / f"{name}.safetensors").unlink(missing_ok=True)
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(scaler.state_dict(), folder / "scaler.pt")
    np.random.seed(3)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": []}, folder / "rng.pt")  # fmt: skip
    expected = np.random.rand(4)
    np.random.seed(99)
    net2, opt2, scaler2 = _parts(seed=2)
    load_train_state(folder, net2, opt2, scaler2)
    assert np.array_equal(np.random.rand(4), expected)
    assert scaler2.state_dict() == scaler.state_dict()


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "rng.json").write_text("{not json"),
        lambda f: (f / "rng.json").write_text(
            json.dumps({"format": "kxl-state-1", "tree": {"$tensor": "t99"}})
        ),
        lambda f: (f / "optimizer.json").write_text(json.dumps({"format": "pickle", "tree": None})),
        lambda f: (f / "rng.safetensors").write_bytes(b"\x00" * 3),
    ],
    ids=["bad-json", "missing-tensor", "unknown-format", "truncated-tensors"],
)
def test_damaged_state_names_the_file(tmp_path, damage):
    folder = _save(tmp_path, *_parts())
    damage(folder)
    with pytest.raises(KxlError) as info:
        load_train_state(folder, *_parts())
    assert str(folder) in str(info.value)
