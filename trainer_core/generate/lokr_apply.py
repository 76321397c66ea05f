"""Apply LoKr files to loaded SDXL components for generation, and take them off again exactly.

Each touched weight is backed up once in fp32 on the CPU before the first change (fp32 holds fp16/bf16/fp32
values exactly), every delta is computed in fp32 with `trainer_core.lokr.math` (the same math the merge bake
uses) and added in fp32 before casting back, so several LoKrs on one layer round only once. `restore()` copies
the backups back: the model is bit-identical to before, never "weights minus delta" in half precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..lokr.file import LokrFile, read_lokr
from ..progress import Progress


@dataclass
class LokrUse:
    """One LoKr file at a strength, as requested by the user."""

    path: Path
    multiplier: float = 1.0


@dataclass
class AppliedLokrs:
    """Handle for LoKrs merged into live components; call `restore()` to return to the base weights."""

    components: Any
    files: list[tuple[LokrFile, float]]
    backups: dict[tuple[str, str], Any] = field(default_factory=dict)  # (component, param name) -> fp32 CPU
    warnings: list[str] = field(default_factory=list)
    restored: bool = False

    @property
    def modules_patched(self) -> int:
        return len(self.backups)

    def restore(self) -> None:
        """Put every touched parameter back to its exact original value (idempotent)."""
        import torch

        if self.restored:
            return
        with torch.no_grad():
            for (component, name), saved in self.backups.items():
                param = _parameter(self.components, component, name)
                param.copy_(saved.to(device=param.device, dtype=param.dtype))
        self.backups.clear()
        self.restored = True


def parse_lokr_arg(text: str) -> LokrUse:
    """`path[:multiplier]` as given on the command line (`my.safetensors:0.8`); the multiplier defaults to 1."""
    from ..errors import KxlError

    path_text, sep, mult_text = text.rpartition(":")
    if sep and path_text and _is_number(mult_text):
        return LokrUse(Path(path_text), float(mult_text))
    if sep and path_text and not Path(text).exists() and "/" not in mult_text and "\\" not in mult_text:
        raise KxlError(
            f"--lokr {text!r}: the strength {mult_text!r} after ':' is not a number (write FILE:0.8)"
        )
    return LokrUse(Path(text), 1.0)


def apply_lokrs(
    components: Any, uses: Sequence[LokrUse | tuple[str | Path, float]], progress: Progress | None = None
) -> AppliedLokrs:
    """Merge every LoKr in `uses` into `components` (in place) and return the handle that undoes it.

    Files are validated before any weight changes, so a bad file leaves the model untouched. Module names the
    architecture does not have are skipped and listed in `warnings`.
    """
    import torch

    items = [u if isinstance(u, LokrUse) else LokrUse(Path(u[0]), float(u[1])) for u in uses]
    loaded: list[tuple[LokrFile, float]] = []
    warnings: list[str] = []
    for use in items:
        if not use.path.is_file():
            raise CheckpointError("LoKr file not found", path=use.path)
        lokr = read_lokr(use.path, components.arch)
        if lokr.unmatched:
            shown = ", ".join(lokr.unmatched[:5]) + (" ..." if len(lokr.unmatched) > 5 else "")
            warnings.append(
                f"{use.path.name}: {len(lokr.unmatched)} module(s) do not exist in this {components.arch} model "
                f"and were skipped: {shown}"
            )
        loaded.append((lokr, use.multiplier))

    applied = AppliedLokrs(components, loaded, warnings=warnings)
    total = sum(len(lokr.modules) for lokr, _ in loaded)
    done = 0
    # Sum all deltas per parameter in fp32 first, then write once: the result does not depend on file order.
    pending: dict[tuple[str, str], Any] = {}
    try:
        with torch.no_grad():
            for lokr, multiplier in loaded:
                for module in lokr.modules:
                    for key, delta in _module_deltas(components, module):
                        if key not in pending:
                            param = _parameter(components, *key)
                            applied.backups[key] = param.detach().to("cpu", torch.float32, copy=True)
                            pending[key] = applied.backups[key].clone()
                        pending[key] += multiplier * delta.to(torch.float32)
                    done += 1
                    if progress is not None:
                        progress.update(done, total, "applying LoKr")
                        progress.check_cancelled()
            for key, value in pending.items():
                param = _parameter(components, *key)
                param.copy_(value.to(device=param.device, dtype=param.dtype))
    except BaseException:
        applied.restore()
        raise
    return applied


def _module_deltas(components: Any, module: Any) -> list[tuple[tuple[str, str], Any]]:
    """[((component, param name), fp32 CPU delta at multiplier 1)] for one LoKr / norm module."""
    from ..lokr.math import lokr_delta

    target = module.target
    weight_key = (target.weight.component, _resolve_name(components, target.weight.component,
                                                         target.weight.diffusers_key))  # fmt: skip
    weight = _parameter(components, *weight_key)
    if module.is_norm:
        # LyCORIS "full" norm modules store the weight/bias difference itself.
        out = []
        if "w_norm" in module.tensors:
            out.append((weight_key, _checked(module.tensors["w_norm"].float(), weight, module.name)))
        if "b_norm" in module.tensors and target.bias is not None:
            bias_key = (target.bias.component, _resolve_name(components, target.bias.component,
                                                             target.bias.diffusers_key))  # fmt: skip
            bias = _parameter(components, *bias_key)
            out.append((bias_key, _checked(module.tensors["b_norm"].float(), bias, module.name)))
        return out
    try:
        delta = lokr_delta(module.tensors, tuple(weight.shape))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"LoKr module {module.name} does not fit its layer: {exc}") from None
    return [(weight_key, delta)]


def _checked(delta: Any, param: Any, name: str) -> Any:
    if tuple(delta.shape) != tuple(param.shape):
        raise CheckpointError(
            f"module {name}: tensor shape {tuple(delta.shape)} does not match the layer {tuple(param.shape)}"
        )
    return delta


def _resolve_name(components: Any, component: str, name: str) -> str:
    """Parameter name as the live module spells it (TE1 has a `text_model.` level only before transformers 5)."""
    model = getattr(components, component)
    for candidate in (name, "text_model." + name, name.removeprefix("text_model.")):
        try:
            model.get_parameter(candidate)
        except AttributeError:
            continue
        return candidate
    raise CheckpointError(f"the loaded {component} has no parameter {name}")


def _parameter(components: Any, component: str, name: str) -> Any:
    return getattr(components, component).get_parameter(name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
