"""Generate the shipped CLIP tokenizer files (resources/sdxl/tokenizer and tokenizer_2) without any model hub.

The only input is OpenCLIP's `open_clip/bpe_simple_vocab_16e6.txt.gz`, taken either from an installed
`open_clip_torch` (install it with `pip install --no-deps open_clip_torch`; it is located without importing, because
its torchvision/timm dependencies are deliberately absent) or straight out of a downloaded wheel:

    python scripts/build_clip_tokenizer.py --wheel open_clip_torch-3.3.0-py3-none-any.whl

The .gz bytes are checked against a pinned sha256, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from trainer_core.atomic import atomic_write_text  # noqa: E402
from trainer_core.errors import KxlError  # noqa: E402
from trainer_core.models.clip_vocab import (  # noqa: E402
    BOS_TOKEN,
    EOS_TOKEN,
    VOCAB_SIZE,
    merges_from_bpe_text,
    merges_txt_text,
    vocab_from_merges,
    vocab_json_text,
)

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
MODEL_MAX_LENGTH = 77
# TE1 (CLIP-L, HF conventions) pads with EOS; TE2 (OpenCLIP bigG) pads with id 0, the "!" token.
PAD_TOKENS = {"tokenizer": EOS_TOKEN, "tokenizer_2": "!"}


def read_bpe_gz(wheel: Path | None) -> bytes:
    """The .gz bytes from the given wheel, else from the installed open_clip package (not imported)."""
    if wheel is not None:
        try:
            with zipfile.ZipFile(wheel) as archive:
                return archive.read(BPE_MEMBER)
        except FileNotFoundError as exc:
            raise KxlError("wheel file not found", path=wheel) from exc
        except (zipfile.BadZipFile, KeyError) as exc:
            raise KxlError(f"not an open_clip_torch wheel containing {BPE_MEMBER}", path=wheel) from exc
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise KxlError(
            "open_clip is not installed",
            hint="pip install --no-deps open_clip_torch, or pass --wheel open_clip_torch-*.whl",
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / Path(BPE_MEMBER).name
        if candidate.is_file():
            return candidate.read_bytes()
    raise KxlError(
        f"installed open_clip has no {Path(BPE_MEMBER).name}", path=list(spec.submodule_search_locations)[0]
    )


def check_sha256(data: bytes, source: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_SHA256:
        raise KxlError(
            f"{BPE_MEMBER} has sha256 {digest}, expected {BPE_SHA256}; refusing to build from it", path=source
        )


def tokenizer_config(pad_token: str) -> dict[str, object]:
    return {
        "add_prefix_space": False,
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS_TOKEN,
    }


def special_tokens_map(pad_token: str) -> dict[str, str]:
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": pad_token, "unk_token": EOS_TOKEN}


def write_tokenizers(gz_bytes: bytes, out_dir: Path) -> None:
    """Write both tokenizer folders under `out_dir` (the diffusers config folder)."""
    merges = merges_from_bpe_text(gzip.decompress(gz_bytes).decode("utf-8"))
    vocab = vocab_from_merges(merges)
    if len(vocab) != VOCAB_SIZE:
        raise KxlError(f"built {len(vocab)} vocab entries, expected {VOCAB_SIZE}")
    vocab_text = vocab_json_text(vocab)
    merges_text = merges_txt_text(merges)
    for folder, pad_token in PAD_TOKENS.items():
        target = out_dir / folder
        atomic_write_text(target / "vocab.json", vocab_text)
        atomic_write_text(target / "merges.txt", merges_text)
        atomic_write_text(target / "tokenizer_config.json", _json_text(tokenizer_config(pad_token)))
        atomic_write_text(target / "special_tokens_map.json", _json_text(special_tokens_map(pad_token)))


def _json_text(data: dict[str, object]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="open_clip_torch-*.whl to read the BPE file from")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "resources" / "sdxl",
        help="config folder (default: resources/sdxl)",
    )
    args = parser.parse_args(argv)
    try:
        data = read_bpe_gz(args.wheel)
        check_sha256(data, str(args.wheel or "installed open_clip"))
        write_tokenizers(data, args.out)
    except KxlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote tokenizer/ and tokenizer_2/ under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
