"""Training-state objects (optimizer, GradScaler, RNG) as data only: tensors in safetensors, the rest in JSON.

Run folders get copied and shared, so `--resume` must never execute anything read from them; `torch.load` with
`weights_only=False` unpickles arbitrary code. A state object is split into a JSON tree and a flat tensor dict:
- tensors go to a safetensors file under keys `t<N>`; the tree holds `{"$tensor": "t<N>"}`; numpy arrays are
  stored as their raw bytes with `{"$ndarray": "t<N>", "dtype": ..., "shape": ...}`;
- dicts keep their key types (optimizer states are keyed by int), tuples stay tuples, and floats survive exactly,
  including inf/nan (JSON's `Infinity`/`NaN`, which Python's json reads and writes);
- anything else (an object of some class) is refused when saving, so a state that cannot round-trip as data is
  found at the first save, not at the resume two weeks later.
Decoding builds only dicts, lists, tuples, str, int, float, bool, None, tensors and numpy arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import KxlError

_TAG_TENSOR, _TAG_ARRAY, _TAG_TUPLE, _TAG_DICT = "$tensor", "$ndarray", "$tuple", "$dict"


def encode_state(obj: Any) -> tuple[Any, dict[str, Any]]:
    """(JSON-able tree, tensors) for `obj`; raises TypeError naming the path of an unsupported value."""
    import numpy as np
    import torch

    tensors: dict[str, Any] = {}

    def walk(value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().to("cpu").contiguous()
            return {_TAG_TENSOR: key}
        if isinstance(value, np.ndarray):
            key = f"t{len(tensors)}"
            # stored as raw bytes: safetensors has no uint32, the dtype of numpy's RNG key
            raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
            tensors[key] = torch.from_numpy(raw.copy())
            return {_TAG_ARRAY: key, "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, tuple):
            return {_TAG_TUPLE: [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"{where}: dict key {k!r} is not a str or int")
                items.append([k, walk(v, f"{where}.{k}")])
            return {_TAG_DICT: items}
        raise TypeError(f"{where}: {type(value).__name__} cannot be saved as data")

    return walk(obj, "state"), tensors


def decode_state(tree: Any, tensors: dict[str, Any], source: Path) -> Any:
    """Inverse of encode_state; anything unexpected is a KxlError naming `source`."""
    import numpy as np

    def bad(what: str) -> KxlError:
        return KxlError(f"training state is damaged or not ours ({what})", path=source)

    def tensor(key: Any) -> Any:
        if not isinstance(key, str) or key not in tensors:
            raise bad(f"missing tensor {key!r}")
        return tensors[key]

    def walk(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict) and len(value) >= 1:
            if _TAG_TENSOR in value:
                return tensor(value[_TAG_TENSOR])
            if _TAG_ARRAY in value:
                try:
                    dtype = np.dtype(str(value["dtype"]))
                except (TypeError, KeyError) as exc:
                    raise bad(f"array dtype {value.get('dtype')!r}") from exc
                if dtype.kind not in "biuf":
                    raise bad(f"array dtype {dtype}")
                raw = tensor(value[_TAG_ARRAY]).cpu().numpy()
                try:
                    return raw.view(dtype).reshape([int(n) for n in value.get("shape", [-1])]).copy()
                except (ValueError, TypeError) as exc:
                    raise bad(f"array of {raw.size} bytes as {dtype}") from exc
            if _TAG_TUPLE in value and isinstance(value[_TAG_TUPLE], list):
                return tuple(walk(v) for v in value[_TAG_TUPLE])
            if _TAG_DICT in value and isinstance(value[_TAG_DICT], list):
                out = {}
                for item in value[_TAG_DICT]:
                    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                        raise bad("dict entry")
                    out[item[0]] = walk(item[1])
                return out
        raise bad(f"unexpected value {str(value)[:40]!r}")

    return walk(tree)


def save_state_object(folder: Path, name: str, obj: Any) -> None:
    """Write `<name>.json` and, when there are tensors, `<name>.safetensors` into `folder`."""
    from ..models.safetensors_writer import save_safetensors

    tree, tensors = encode_state(obj)
    (folder / f"{name}.json").write_text(
        json.dumps({"format": "kxl-state-1", "tree": tree}), encoding="utf-8"
    )
    if tensors:
        save_safetensors(folder / f"{name}.safetensors", tensors)


def load_state_object(folder: Path, name: str, device: Any = None) -> Any:
    """Read what save_state_object wrote (tensors moved to `device` when given)."""
    from safetensors.torch import load_file

    meta_path = folder / f"{name}.json"
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KxlError(f"training state is unreadable ({exc})", path=meta_path) from None
    if not isinstance(doc, dict) or doc.get("format") != "kxl-state-1":
        raise KxlError("training state has an unknown format", path=meta_path)
    tensor_path = folder / f"{name}.safetensors"
    tensors: dict[str, Any] = {}
    if tensor_path.is_file():
        try:
            tensors = load_file(str(tensor_path), device="cpu" if device is None else str(device))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise KxlError(f"training state tensors are unreadable ({exc})", path=tensor_path) from None
    return decode_state(doc.get("tree"), tensors, meta_path)
