"""One op per adapted layer: our forward for lycoris-lora's LoKr and Norm modules (issue #14).

lycoris-lora 4.1.x computes an adapted layer as the base op plus a second op with the delta weight
(`F.linear(x, W) + F.linear(x, ΔW)`), and each adapted norm twice. On full SDXL that is 47.5 instead of 28.7 TFLOP
per 1024² training image. The forward installed here runs the layer's op ONCE, with the merged weight
`W + multiplier·scalar·ΔW`:
- ΔW comes from the module's own `get_weight` (so lycoris' kron, tucker rebuild, scale and rank dropout, and its
  fused GPU kernels where it picks them, are all unchanged); the norm's merged weight/bias from its own `make_weight`.
- The sum is formed in the wider of the two dtypes (fp32 parameters + fp16 base gives fp32), then cast once to the
  dtype the op runs in: the autocast dtype for Linear/Conv under autocast, the base weight's dtype without autocast.
  Norms under autocast get the fp32 merged weight and autocast applies its norm policy, as it would to the base op.
- Gradients: d(loss)/d(merged W) reaches ΔW's factors through the add, exactly what the second op delivered; a frozen
  base weight gets none (the add of a tensor without requires_grad records nothing for it).
- Nothing is registered on the modules: a bound method replaces `forward` on the instance, so `state_dict()`,
  parameter lists and saved files are what they were.

Trade-off (known, accepted): in fp16/bf16 the merged weight is rounded at the base weight's magnitude, so a ΔW below
half an ulp of W does not show in the forward (the two-op path kept it as a separate product). The gradient is not
affected, and this is exactly what inference sees once the LoKr is merged into a half-precision checkpoint.

Cases left to lycoris' own forward (correct, only slower), decided per module at install time and re-checked per call:
bypass mode (quantised/fp8 bases: ΔW is never built there), DoRA (`weight_decompose`), norms that wrap `_norm`
(RMSNorm-style), base layers other than plain nn.Linear/ConvNd/LayerNorm/GroupNorm or with a non-zero padding mode,
a layer with several LyCORIS wrappers stacked, and extra call arguments. Plain `dropout` has no effect in lycoris'
rebuild path (it warns and ignores it), `rank_dropout` is part of `get_weight`/`make_weight` (so part of the merged
weight), and `module_dropout` skips the whole module, which we reproduce with the same RNG draw.
"""

from __future__ import annotations

import logging
import re
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

# The lycoris-lora releases whose module internals (org_module, org_forward, get_weight, make_weight, scale, scalar,
# multiplier, op, kw_dict, _lycoris_wrappers) this file was written and tested against: [low, high).
TESTED_LYCORIS = ((4, 1, 3), (4, 2, 0))

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BASE_TYPES = (nn.Linear, *_CONV_TYPES)
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class FusedInstall:
    """What `install_fused_forward` did to one network."""

    lokr: int = 0
    norm: int = 0
    fallback: int = 0  # modules left on lycoris' own forward
    reason: str = ""  # set when the whole network was left alone (untested lycoris-lora version)

    def __add__(self, other: FusedInstall) -> FusedInstall:
        return FusedInstall(
            self.lokr + other.lokr,
            self.norm + other.norm,
            self.fallback + other.fallback,
            self.reason or other.reason,
        )


def lycoris_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lycoris-lora")
    except PackageNotFoundError:
        import lycoris

        return str(getattr(lycoris, "__version__", "0"))


def _release(text: str) -> tuple[int, ...]:
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    if not m:
        return ()
    parts = tuple(int(p) for p in m.group(1).split("."))
    return (parts + (0, 0, 0))[:3]


def version_tested(text: str) -> bool:
    """True when `text` (a lycoris-lora version) lies in TESTED_LYCORIS."""
    rel = _release(text)
    low, high = TESTED_LYCORIS
    return bool(rel) and low <= rel < high


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype active for x's device type, or None (autocast off, or a device type autocast lacks)."""
    device_type = x.device.type
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except RuntimeError:  # e.g. "meta": no autocast dispatch key
        pass
    return None


def _plain_base(lora: Any, types_: tuple[type, ...]) -> bool:
    """The layer is a plain torch layer whose only LyCORIS wrapper is `lora`, so its base op is `lora.op`."""
    org = lora.org_module[0]
    if type(org) not in types_:
        return False
    if getattr(org, "_lycoris_wrappers", None) != [lora]:
        return False
    # org_forward must be the class forward of the layer itself, not another wrapper or a patched forward.
    base = lora.org_forward
    return getattr(base, "__self__", None) is org and getattr(base, "__func__", None) is type(org).forward


def _lokr_fusable(lora: Any) -> bool:
    org = lora.org_module[0]
    if not _plain_base(lora, _BASE_TYPES) or lora.bypass_mode or lora.wd or getattr(lora, "is_quant", False):
        return False
    return not (isinstance(org, _CONV_TYPES) and org.padding_mode != "zeros")


def _norm_fusable(lora: Any) -> bool:
    if lora.not_supported or lora.org_norm is not None or not _plain_base(lora, _NORM_TYPES):
        return False
    org = lora.org_module[0]
    # Without affine weight/bias lycoris' own make_weight fails too; leave such layers exactly as lycoris has them.
    return org.weight is not None and org.bias is not None and getattr(lora, "b_norm", None) is not None


def _fused_lokr_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or self.bypass_mode or self.wd:
        return type(self).forward(self, x, *args, **kwargs)
    # module_dropout skips the whole module; the same draw as lycoris' forward, so RNG streams stay aligned.
    if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
        return self.org_forward(x)

    org = self.org_module[0]
    weight = org.weight
    diff = self.get_weight(self.shape)  # scale·kron(w1, w2), rank dropout included; the module's dtype (fp32)
    factor: Any = self.multiplier
    if isinstance(self.scalar, nn.Parameter):  # use_scalar=True; otherwise the buffer is a constant 1.0
        factor = self.scalar * self.multiplier
    if weight.device != diff.device:
        diff = diff.to(weight.device)
    # torch.add promotes (fp16 base + fp32 ΔW → fp32): one rounding, in the cast below.
    merged = (
        torch.add(weight, diff)
        if isinstance(factor, (int, float)) and factor == 1
        else weight + diff * factor
    )
    compute = _autocast_dtype(x) or weight.dtype
    merged = merged.to(device=x.device, dtype=compute)
    return self.op(x, merged, org.bias, **self.kw_dict)


def _fused_norm_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or self.not_supported or self.org_norm is not None:
        return type(self).forward(self, x, *args, **kwargs)
    if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
        return self.org_forward(x)

    org = self.org_module[0]
    # W + m·w_norm and b + m·b_norm in the module's dtype (fp32), rank dropout included
    weight, bias = self.make_weight(self.multiplier, x.device)
    if _autocast_dtype(x) is None:
        weight, bias = weight.to(org.weight.dtype), bias.to(org.bias.dtype)
    # Under autocast the fp32 merged affine goes in as is: autocast applies its norm policy, as for the base op.
    return self.op(x, weight=weight, bias=bias, **self.kw_dict)


def _set_forward(lora: Any, fn: Any) -> None:
    org = lora.org_module[0]
    if fn is None:
        lora.__dict__.pop("forward", None)
    else:
        object.__setattr__(lora, "forward", types.MethodType(fn, lora))
    org.forward = lora.forward  # what apply_to() installed, now the (un)fused bound method


def _loras(net: Any) -> Iterable[Any]:
    return getattr(net, "loras", None) or [m for m in net.modules() if hasattr(m, "org_module")]


def install_fused_forward(net: Any, *, strict: bool = False) -> FusedInstall:
    """Give every LoKr/Norm module of an applied LyCORIS network (after `apply_to()`) the one-op forward.

    An untested lycoris-lora version leaves the network on lycoris' own forward with a warning (strict=True raises
    instead). Idempotent; `uninstall_fused_forward` restores lycoris' forward.
    """
    from lycoris.modules.lokr import LokrModule
    from lycoris.modules.norms import NormModule

    ver = lycoris_version()
    if not version_tested(ver):
        low, high = (".".join(map(str, v)) for v in TESTED_LYCORIS)
        msg = (
            f"lycoris-lora {ver} is outside the tested range >={low},<{high}: the one-op LoKr forward is off and "
            "training uses lycoris' own two-op forward (correct, about 1.65x the FLOPs)"
        )
        if strict:
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        return FusedInstall(fallback=len(list(_loras(net))), reason=msg)

    out = FusedInstall()
    for lora in _loras(net):
        if isinstance(lora, LokrModule) and _lokr_fusable(lora):
            _set_forward(lora, _fused_lokr_forward)
            out.lokr += 1
        elif isinstance(lora, NormModule) and _norm_fusable(lora):
            _set_forward(lora, _fused_norm_forward)
            out.norm += 1
        else:
            out.fallback += 1
    return out


def uninstall_fused_forward(net: Any) -> int:
    """Put lycoris' own forward back on every module that has ours; returns how many were changed."""
    n = 0
    for lora in _loras(net):
        if is_fused(lora):
            _set_forward(lora, None)
            n += 1
    return n


def is_fused(lora: Any) -> bool:
    fn = lora.__dict__.get("forward")
    return getattr(fn, "__func__", None) in (_fused_lokr_forward, _fused_norm_forward)
