"""One op per adapted module (issue #14): trainer_core.train.fused_forward against lycoris-lora's two-op forward.

The tiny SDXL carries two networks: the tiny-demo preset (every w2 a full matrix, as on real SDXL) on the UNet and
both TEs, and a low-rank one (dim 2: w2 = w2_a @ w2_b) on copies of the UNet and TE1. Every network tensor is
perturbed, since w2 / w2_b and the norm deltas start at zero.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from trainer_core.train import fused_forward as ff  # noqa: E402
from trainer_core.train.config import load_preset  # noqa: E402

aten = torch.ops.aten


def _perturb(nets, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in nets.named_parameters():
            if not name.endswith("alpha"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="module")
def tiny():
    from trainer_core.models.tiny import build_tiny_components
    from trainer_core.train.networks import create_networks

    comps = build_tiny_components(0)
    for m in comps.models().values():
        m.requires_grad_(False)
    bare_unet = copy.deepcopy(comps.unet)
    low_unet, low_te = copy.deepcopy(comps.unet), copy.deepcopy(comps.text_encoder)
    plain = {"unet": copy.deepcopy(comps.unet), "text_encoder": copy.deepcopy(comps.text_encoder),
             "text_encoder_2": copy.deepcopy(comps.text_encoder_2)}  # fmt: skip
    cfg = load_preset("tiny-demo").network
    torch.manual_seed(0)
    full = create_networks({"unet": comps.unet, "text_encoder": comps.text_encoder,
                            "text_encoder_2": comps.text_encoder_2}, cfg)  # fmt: skip
    torch.manual_seed(0)
    # same init, lycoris' own forward: for the saved-file check
    unfused = create_networks(plain, cfg, fused=False)
    low_cfg = dataclasses.replace(cfg, dim=2, alpha=1.0, conv_dim=2, conv_alpha=1.0)
    torch.manual_seed(1)
    low = create_networks({"unet": low_unet, "text_encoder": low_te}, low_cfg)
    _perturb(full, 5)
    _perturb(low, 6)
    return {"comps": comps, "bare_unet": bare_unet, "full": full, "low": low, "low_unet": low_unet,
            "low_te": low_te, "unfused": unfused}  # fmt: skip


def _unet_inputs(seed: int = 0, batch: int = 1, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 4, size, size), generator=gen)
    kw = {
        "encoder_hidden_states": torch.randn((batch, 7, 80), generator=gen),
        "added_cond_kwargs": {"text_embeds": torch.randn((batch, 48), generator=gen),
                              "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)},
    }  # fmt: skip
    return x, torch.tensor([500] * batch), kw


def _kind(lora) -> tuple[str, ...]:
    org = lora.org_module[0]
    if type(lora).__name__ == "NormModule":
        return ("norm", type(org).__name__)
    return ("lokr", type(org).__name__, "full" if lora.use_w2 else "low-rank")


def _all_loras(*networks):
    return [lora for nets in networks for net in nets.nets.values() for lora in net.loras]


class _Swap:
    """Run a block on lycoris' own forward, then put ours back."""

    def __init__(self, nets):
        self.nets = nets

    def __enter__(self):
        for net in self.nets.nets.values():
            ff.uninstall_fused_forward(net)

    def __exit__(self, *exc):
        for net in self.nets.nets.values():
            ff.install_fused_forward(net)


def _grads(nets):
    return {name: p.grad.detach().clone() for name, p in nets.named_parameters() if p.grad is not None}


def _zero(nets, *models):
    for p in nets.parameters():
        p.grad = None
    for m in models:
        for p in m.parameters():
            p.grad = None


def _unet_step(unet, nets, seed: int = 0):
    _zero(nets, unet)
    x, t, kw = _unet_inputs(seed)
    x.requires_grad_(True)
    out = unet(x, t, **kw).sample
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
    (out * w).sum().backward()
    assert all(p.grad is None for p in unet.parameters())  # the frozen base gets no gradient
    return out.detach(), x.grad.detach(), _grads(nets)


def _te_step(te, nets, seed: int = 0):
    _zero(nets, te)
    ids = torch.randint(0, 49408, (2, 11), generator=torch.Generator().manual_seed(seed))
    out = te(ids).last_hidden_state
    (out * out).sum().backward()
    assert all(p.grad is None for p in te.parameters())
    return out.detach(), _grads(nets)


def _close(a, b, rtol=1e-4):
    scale = b.abs().max().clamp_min(1e-6)
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * scale), float((a - b).abs().max() / scale)


def test_every_module_kind_gets_the_fused_forward(tiny):
    full, low = tiny["full"], tiny["low"]
    assert full.fused.fallback == 0 and low.fused.fallback == 0
    assert full.fused.lokr == full.module_count()["LokrModule"]
    assert full.fused.norm == full.module_count()["NormModule"]
    loras = _all_loras(full, low)
    assert all(ff.is_fused(lora) for lora in loras)
    assert {_kind(lora) for lora in loras} >= {
        ("lokr", "Linear", "full"), ("lokr", "Conv2d", "full"), ("lokr", "Linear", "low-rank"),
        ("lokr", "Conv2d", "low-rank"), ("norm", "GroupNorm"), ("norm", "LayerNorm"),
    }  # fmt: skip
    # the layer calls our forward: apply_to()'s hook now points at the fused bound method
    assert all(lora.org_module[0].forward == lora.forward for lora in loras)
    assert tiny["unfused"].fused is None
    assert not any(ff.is_fused(lora) for lora in _all_loras(tiny["unfused"]))


@pytest.mark.parametrize("which", ["full", "low"])
def test_unet_outputs_and_gradients_match_lycoris_two_op(tiny, which):
    nets = tiny[which]
    unet = tiny["comps"].unet if which == "full" else tiny["low_unet"]
    out, gx, grads = _unet_step(unet, nets)
    with _Swap(nets):
        ref_out, ref_gx, ref_grads = _unet_step(unet, nets)
    base_out = tiny["bare_unet"](*_unet_inputs()[:2], **_unet_inputs()[2]).sample
    assert (ref_out - base_out).abs().max() > 1e-2  # the perturbed network really changes the output
    _close(out, ref_out)
    _close(gx, ref_gx)
    assert grads.keys() == ref_grads.keys()
    unet_names = [n for n in grads if n.startswith("unet/")]
    assert unet_names and all(ref_grads[n].abs().max() > 0 for n in unet_names)
    for name in grads:
        _close(grads[name], ref_grads[name])


@pytest.mark.parametrize("which", ["full", "low"])
def test_text_encoder_outputs_and_gradients_match_lycoris_two_op(tiny, which):
    nets = tiny[which]
    te = tiny["comps"].text_encoder if which == "full" else tiny["low_te"]
    out, grads = _te_step(te, nets)
    with _Swap(nets):
        ref_out, ref_grads = _te_step(te, nets)
    _close(out, ref_out)
    te_names = [n for n in grads if n.startswith("text_encoder/")]
    assert te_names and all(ref_grads[n].abs().max() > 0 for n in te_names)
    for name in grads:
        _close(grads[name], ref_grads[name])


class _CountLayerOps(TorchDispatchMode):
    """Counts the ops that touch the activations: matmuls with `rows` output rows, convolutions, norms.

    The ΔW construction (kron = broadcast mul; w2_a @ w2_b = a matmul of weight-sized rows) is not counted."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.count = rows, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm):
            self.count += out.numel() % self.rows == 0 and out.shape[-2] % self.rows == 0
        elif packet in (aten.convolution, aten.native_group_norm, aten.native_layer_norm):
            self.count += 1
        return out


def _layer_input(lora, rows: int = 7):
    org = lora.org_module[0]
    if isinstance(org, torch.nn.Linear):
        return torch.randn(1, rows, org.in_features)
    if isinstance(org, torch.nn.LayerNorm):
        return torch.randn(1, rows, *org.normalized_shape)
    channels = org.in_channels if isinstance(org, torch.nn.Conv2d) else org.num_channels
    return torch.randn(1, channels, 5, 5)


def test_one_layer_op_per_module_forward(tiny):
    picked = {}
    for lora in _all_loras(tiny["full"], tiny["low"]):
        picked.setdefault(_kind(lora), lora)
    assert len(picked) == 6
    for kind, lora in picked.items():
        x = _layer_input(lora)
        with _CountLayerOps(7) as fused:
            y = lora.org_module[0](x)
        with _Swap(tiny["full"]), _Swap(tiny["low"]), _CountLayerOps(7) as two:
            y_ref = lora.org_module[0](x)
        assert fused.count == 1, kind
        assert two.count == 2, kind  # lycoris: base op + delta op (the counter does see both)
        _close(y.detach(), y_ref.detach())


def _lowrank_construction_flops(nets) -> int:
    """FLOPs of w2_a @ w2_b over the low-rank modules (kron itself is an elementwise product: no matmul FLOPs)."""
    total = 0
    for lora in _all_loras(nets):
        if type(lora).__name__ == "LokrModule" and not lora.use_w2:
            total += 2 * lora.lokr_w2_a.shape[0] * lora.lokr_w2_a.shape[1] * lora.lokr_w2_b.shape[1]
            if not lora.use_w1:
                total += 2 * lora.lokr_w1_a.shape[0] * lora.lokr_w1_a.shape[1] * lora.lokr_w1_b.shape[1]
    return total


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("which", ["full", "low"])
def test_unet_forward_flops_are_the_bare_unet_plus_delta_construction(tiny, which):
    nets = tiny[which]
    unet = tiny["comps"].unet if which == "full" else tiny["low_unet"]
    x, t, kw = _unet_inputs(batch=1, size=16)
    with torch.no_grad():
        bare = _flops(lambda: tiny["bare_unet"](x, t, **kw))
        fused = _flops(lambda: unet(x, t, **kw))
        with _Swap(nets):
            two = _flops(lambda: unet(x, t, **kw))
    unet_only = type("N", (), {"nets": {"unet": nets.nets["unet"]}})()
    assert fused == bare + _lowrank_construction_flops(unet_only)
    assert two > 1.8 * bare  # every conv/linear of the tiny UNet is adapted: the second op doubles them
    assert fused < 0.6 * two


def test_forward_backward_flops_fused_below_two_op(tiny):
    nets, unet = tiny["full"], tiny["comps"].unet
    x, t, kw = _unet_inputs(batch=1, size=16)

    def step():
        unet(x, t, **kw).sample.square().mean().backward()

    fused = _flops(step)
    with _Swap(nets):
        two = _flops(step)
    _zero(nets, unet)
    # fwd W·x, bwd dL/dx and dL/dW: 3 matmuls per layer instead of lycoris' 5 (2 fwd, 2 dL/dx, 1 dL/dΔW)
    assert 0.55 < fused / two < 0.65


def test_state_dict_and_saved_file_are_unchanged(tiny, tmp_path):
    from trainer_core.train.checkpoint import save_lokr

    full, unfused = tiny["full"], tiny["unfused"]
    fresh = copy.deepcopy(unfused)  # same seed as `full` before its perturbation
    for net in fresh.nets.values():
        names = ([n for n, _ in net.named_parameters()], [n for n, _ in net.named_buffers()])
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        res = ff.install_fused_forward(net)
        assert res.fallback == 0 and res.lokr + res.norm == len(net.loras)
        after = net.state_dict()
        assert list(after) == list(sd)
        assert all(torch.equal(after[k], sd[k]) for k in sd)
        assert ([n for n, _ in net.named_parameters()], [n for n, _ in net.named_buffers()]) == names
    assert list(fresh.state_dict()) == list(full.state_dict())
    meta = {"ss_base_model_version": "sdxl_base_v1-0"}
    a = save_lokr(tmp_path / "fused.safetensors", fresh.state_dict(), "kxl-tiny", meta)
    b = save_lokr(tmp_path / "plain.safetensors", unfused.state_dict(), "kxl-tiny", meta)
    assert a.read_bytes() == b.read_bytes()


class _WeightDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (aten.mm, aten.addmm, aten.convolution):
            self.dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2)
        return func(*args, **(kwargs or {}))


def test_cpu_autocast_bf16_backward(tiny):
    nets, unet = tiny["full"], tiny["comps"].unet

    def step():
        _zero(nets, unet)
        x, t, kw = _unet_inputs(batch=1, size=8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unet(x, t, **kw).sample
            loss = out.float().square().mean()
        loss.backward()
        return out.float().detach(), _grads(nets)

    with _WeightDtypes() as seen:
        out, grads = step()
    # every Linear/Conv ran in the autocast dtype, merged weight included
    assert seen.dtypes == {torch.bfloat16}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert all(grads[n].abs().max() > 0 for n in grads if n.startswith("unet/") and "lokr_w" in n)
    with _Swap(nets):
        ref, ref_grads = step()
    # bf16: the same function up to bf16 rounding (the merged weight is rounded once, lycoris rounds W and ΔW·x)
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    _zero(nets, unet)


class _OneNet(torch.nn.Module):
    def __init__(self, *loras):
        super().__init__()
        self.loras = torch.nn.ModuleList(loras)


def _standalone(org, seed=0, **kw):
    from lycoris.modules.lokr import LokrModule

    torch.manual_seed(seed)
    lora = LokrModule("m", org, **kw)
    lora.apply_to()
    _perturb(lora, seed + 1)
    return lora


@pytest.mark.parametrize(
    ("make", "kw"),
    [
        (lambda: torch.nn.Linear(64, 64), {"lora_dim": 2, "alpha": 1.0, "factor": 8, "decompose_both": True}),
        (lambda: torch.nn.Conv2d(16, 32, 3, padding=1), {"lora_dim": 2, "factor": 4, "use_tucker": True}),
        (lambda: torch.nn.Conv2d(16, 32, 3, stride=2), {"lora_dim": 3, "alpha": 2.0, "factor": 2}),
        (lambda: torch.nn.Conv1d(8, 8, 3, padding=1), {"lora_dim": 64, "factor": 2, "multiplier": 0.5}),
        (lambda: torch.nn.Linear(16, 16), {"lora_dim": 2, "factor": 4, "use_scalar": True}),
        (lambda: torch.nn.Linear(32, 16), {"lora_dim": 2, "rank_dropout": 0.3, "module_dropout": 0.4}),
    ],
    ids=["decompose-both", "tucker-conv", "conv-stride", "conv1d-mult", "scalar", "dropouts"],
)
def test_standalone_variants_match(make, kw):
    lora = _standalone(make(), **kw)
    org = lora.org_module[0]
    assert ff.install_fused_forward(_OneNet(lora)).lokr == 1
    if isinstance(org, torch.nn.Linear):
        x = torch.randn(3, org.in_features)
    else:
        x = torch.randn(3, org.in_channels, *(9,) * (org.weight.dim() - 2))
    lora.train()

    def run():
        for p in lora.parameters():
            p.grad = None
        outs = []
        for i in range(6):  # several draws of rank/module dropout
            torch.manual_seed(100 + i)
            outs.append(org(x))
        torch.stack(outs).square().sum().backward()
        return torch.stack(outs).detach(), {n: p.grad.clone() for n, p in lora.named_parameters()}

    out, grads = run()
    ff.uninstall_fused_forward(_OneNet(lora))
    assert not ff.is_fused(lora)
    ref, ref_grads = run()
    _close(out, ref)
    for name in grads:
        _close(grads[name], ref_grads[name])


def test_unfusable_modules_keep_lycoris_forward():
    dora = _standalone(torch.nn.Linear(16, 16), lora_dim=2, factor=4, weight_decompose=True)
    reflect = _standalone(torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), lora_dim=64, factor=2)
    res = ff.install_fused_forward(_OneNet(dora, reflect))
    assert (res.lokr, res.fallback) == (0, 2)
    assert not ff.is_fused(dora) and not ff.is_fused(reflect)


def test_untested_lycoris_version_falls_back(monkeypatch):
    assert ff.version_tested("4.1.3") and ff.version_tested("4.1.9.post1")
    assert not ff.version_tested("4.2.0") and not ff.version_tested("4.1.2") and not ff.version_tested("5")
    lora = _standalone(torch.nn.Linear(16, 16), lora_dim=64, factor=4)
    monkeypatch.setattr(ff, "lycoris_version", lambda: "4.2.0")
    with pytest.warns(RuntimeWarning, match="outside the tested range"):
        res = ff.install_fused_forward(_OneNet(lora))
    assert res.lokr == 0 and res.fallback == 1 and not ff.is_fused(lora)
    with pytest.raises(RuntimeError, match="4.2.0"):
        ff.install_fused_forward(_OneNet(lora), strict=True)
