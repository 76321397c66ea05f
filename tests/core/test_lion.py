"""The trainer's multi-tensor Lion (optimizer.type = "Lion") takes bitsandbytes' 32-bit Lion's steps exactly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from trainer_core.train.lion import ForeachLion  # noqa: E402
from trainer_core.train.optim import create_optimizer  # noqa: E402


def _pair(shapes):
    torch.manual_seed(0)
    start = [torch.randn(s) for s in shapes]
    return [p.clone().requires_grad_() for p in start], [p.clone().requires_grad_() for p in start]


def test_foreach_lion_matches_bitsandbytes_lion_step_for_step():
    shapes = [(10,), (64, 33), (3, 3, 4, 4), (5000,)]  # small and large tensors (bnb's two code paths)
    ours, theirs = _pair(shapes)
    kw = {"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.1}
    groups = lambda ps: [{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:], "lr": 3e-3}]  # noqa: E731
    a = ForeachLion(groups(ours), **kw)
    b = bnb.optim.Lion(groups(theirs), optim_bits=32, **kw)
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(ours, grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["exp_avg"], b.state[q]["state1"])
    moved = max((p - s).abs().max().item() for p, s in zip(ours, _pair(shapes)[0], strict=True))
    assert moved > 1e-3  # the steps did something


def test_foreach_lion_goes_on_from_a_bitsandbytes_lion_state():
    ours, theirs = _pair([(7, 5)])
    a = ForeachLion(ours, lr=1e-2, betas=(0.9, 0.99))
    b = bnb.optim.Lion(theirs, lr=1e-2, betas=(0.9, 0.99), optim_bits=32)
    g = torch.randn(7, 5)
    theirs[0].grad = g.clone()
    b.step()  # one step with bitsandbytes, then its state (exp avg as `state1`) goes on in ours
    ours[0].data.copy_(theirs[0].data)
    a.state[ours[0]]["state1"] = b.state[theirs[0]]["state1"].clone()
    g2 = torch.randn(7, 5)
    ours[0].grad, theirs[0].grad = g2.clone(), g2.clone()
    a.step()
    b.step()
    assert torch.equal(ours[0], theirs[0])


def test_optimizer_type_lion_is_the_multi_tensor_one():
    from trainer_core.train.config import OptimizerConfig

    p = torch.nn.Parameter(torch.zeros(3))
    opt = create_optimizer([{"params": [p], "lr": 1e-3, "base_lr": 1e-3, "name": "unet"}],
                           OptimizerConfig(type="Lion"))  # fmt: skip
    assert isinstance(opt, ForeachLion)
