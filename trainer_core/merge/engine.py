"""The streaming merge: plan (validate inputs, keys, shapes, disk), then compute and write tensor by tensor.

Every tensor is computed in fp32 and cast to the output dtype. The output header (names, shapes, offsets, recipe)
is written before the first tensor; the inputs' SHA-256 are computed from the merge's own reads (stream_hash.py)
and patched into the header at the end (same byte length), so hashing costs no extra pass over 7 GB files.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_path, check_free_space
from ..direct_io import ALIGN, SequentialWriter
from ..errors import CheckpointError, KxlError
from ..hashing import cached_sha256, full_sha256, remember_sha256
from ..lokr.file import LokrFile, check_module_fits, read_lokr
from ..lokr.math import lokr_delta
from ..models.loading import checkpoint_metadata, torch_dtype
from ..models.safetensors_writer import ST_ITEMSIZE, PlannedTensor, StreamingWriter, build_header, plan_order
from ..models.sdxl_layout import EMBEDDING_KEYS, IGNORED_SGM_KEYS
from ..ownership import AlreadyRunning, owned
from ..progress import Progress, ensure_progress
from .blocks import block_of
from .feeds import SEGMENT_BYTES, Feed, open_feed
from .recipe import MergeRecipe
from .sources import ModelSource, SingleFileSource, SourceTensor, open_source
from .streaming import RANGE, Arithmetic, TensorJob, check_range

OUT_DTYPES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
HASH_PLACEHOLDER = "0" * 64
RAM_BASELINE = 450 * 2**20  # interpreter + torch, measured on the CPU wheel


@dataclass
class LokrPatch:
    module: Any  # trainer_core.lokr.file.LokrModule
    multiplier: float
    part: int | None
    parts: int
    tensor: str  # "weight" -> LoKr delta or w_norm, "bias" -> b_norm


@dataclass
class MergePlan:
    recipe: MergeRecipe
    arch: str
    keys: list[str]  # output keys in write order (A's file order)
    entries: list[PlannedTensor]
    taken_from_a: list[str]  # keys some input lacks, copied from A (missing="take_a")
    dropped: list[str]  # keys only some non-A input has, or ignored legacy keys
    reverted: list[str]
    patches: dict[str, list[LokrPatch]]
    lokr_files: list[LokrFile]
    warnings: list[str]
    out_bytes: int
    peak_ram_bytes: int


@dataclass
class MergeResult:
    path: Path
    plan: MergePlan
    seconds: float
    input_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return self.plan.warnings


def _check_out_path(recipe: MergeRecipe, out: Path) -> None:
    if out.suffix != ".safetensors":
        raise KxlError("the output must be a .safetensors file", path=out)
    if out.is_dir():
        raise KxlError("the output path is a folder", path=out)
    named = [*recipe.inputs, *([recipe.original] if recipe.original else []), *(p for p, _ in recipe.lokr)]
    for p in named:
        src = Path(p)
        if src.resolve() == out.resolve() or (out.exists() and src.exists() and src.samefile(out)):
            raise KxlError("the output path is also an input; choose another file name", path=out)


def _key_problems(a: ModelSource, other: ModelSource, role: str) -> tuple[list[str], list[str]]:
    keys_a, keys_o = set(a.tensors) - IGNORED_SGM_KEYS, set(other.tensors) - IGNORED_SGM_KEYS
    return sorted(keys_a - keys_o), sorted(keys_o - keys_a)


def _lokr_patches(recipe: MergeRecipe, arch: str, shapes: dict[str, tuple[int, ...]]):
    """LoKr patches per output key; every module's shapes are checked against its target here, at plan time."""
    patches: dict[str, list[LokrPatch]] = {}
    files: list[LokrFile] = []
    for path, mult in recipe.lokr:
        lf = read_lokr(path, arch)
        files.append(lf)
        for mod in lf.modules:
            check_module_fits(lf, mod, shapes)
            t = mod.target
            if mod.is_norm:
                if "w_norm" in mod.tensors:
                    patches.setdefault(t.weight.sgm_key, []).append(LokrPatch(mod, mult, None, 1, "weight"))
                if "b_norm" in mod.tensors and t.bias is not None:
                    patches.setdefault(t.bias.sgm_key, []).append(LokrPatch(mod, mult, None, 1, "bias"))
                continue
            patches.setdefault(t.weight.sgm_key, []).append(
                LokrPatch(mod, mult, t.weight.part, t.weight.parts, "weight")
            )
    return patches, files


def plan_merge(recipe: MergeRecipe, out: str | Path | None = None) -> MergePlan:
    """Validate everything that can be checked before writing a byte."""
    warnings = recipe.validate()
    if out is not None:
        _check_out_path(recipe, Path(out))
    sources = [open_source(p) for p in recipe.inputs]
    original = open_source(recipe.original) if recipe.original else None
    try:
        a = sources[0]
        everyone = [*sources[1:], *([original] if original else [])]
        for s in everyone:
            if s.arch != a.arch:
                raise CheckpointError(f"is a {s.arch} model but the first input is {a.arch}", path=s.path)
        taken: set[str] = set()
        dropped: set[str] = {k for k in a.tensors if k in IGNORED_SGM_KEYS}
        for s in sources[1:]:
            missing, extra = _key_problems(a, s, "input")
            dropped.update(extra)
            if missing and recipe.missing == "error":
                raise CheckpointError(
                    f"lacks {len(missing)} tensor(s) the first input has (e.g. {', '.join(missing[:3])})",
                    path=s.path,
                    hint="choose 'take missing keys from A' (CLI: --missing take_a) to copy them from the first input",
                )
            taken.update(missing)
            for k in set(a.tensors) & set(s.tensors):
                if a.tensors[k].shape != s.tensors[k].shape:
                    raise CheckpointError(f"tensor '{k}' has shape {s.tensors[k].shape}, the first input has "
                                          f"{a.tensors[k].shape}", path=s.path)  # fmt: skip
        reverted = [EMBEDDING_KEYS[name] for name in recipe.revert]
        for key in reverted:
            if original is None or key not in original.tensors:
                raise CheckpointError(f"the original model has no '{key}' to revert to", path=recipe.original)
            if key in a.tensors and original.tensors[key].shape != a.tensors[key].shape:
                raise CheckpointError(f"'{key}' has shape {original.tensors[key].shape} in the original, "
                                      f"{a.tensors[key].shape} in the inputs", path=recipe.original)  # fmt: skip
        keys = [k for k in a.file_order() if k not in dropped]
        shapes = {k: a.tensors[k].shape for k in keys}
        patches, lokr_files = _lokr_patches(recipe, a.arch, shapes)
        for lf in lokr_files:
            if lf.unmatched:
                warnings.append(f"{lf.name}: {len(lf.unmatched)} module(s) match no layer and are skipped "
                                f"(e.g. {', '.join(lf.unmatched[:3])})")  # fmt: skip
        out_dtype = OUT_DTYPES[recipe.dtype]
        entries = [
            PlannedTensor(
                k, out_dtype if a.tensors[k].dtype in FLOAT_DTYPES else a.tensors[k].dtype, shapes[k]
            )
            for k in keys
        ]
        out_bytes = sum(e.nbytes for e in entries)
        peak = _ram_estimate(entries, a.tensors, len(sources) + (original is not None), out_dtype)
        return MergePlan(recipe, a.arch, keys, entries, sorted(taken), sorted(dropped), reverted, patches,
                         lokr_files, warnings, out_bytes, peak)  # fmt: skip
    finally:
        for s in sources:
            s.close()
        if original is not None:
            original.close()


def _apply_patches(result, patches: list[LokrPatch]):
    for p in patches:
        mod = p.module
        if mod.is_norm:
            delta = (mod.tensors["w_norm"] if p.tensor == "weight" else mod.tensors["b_norm"]).float()
            result += p.multiplier * delta.reshape(result.shape)
            continue
        if p.part is None:
            result += p.multiplier * lokr_delta(mod.tensors, tuple(result.shape))
        else:
            rows = result.shape[0] // p.parts
            view = result[p.part * rows : (p.part + 1) * rows]
            view += p.multiplier * lokr_delta(mod.tensors, tuple(view.shape))
    return result


def _job_for(
    key: str, recipe: MergeRecipe, plan: MergePlan, inputs: list[ModelSource | None], out_st: str
) -> TensorJob:
    """`inputs` = the recipe's inputs followed by the original model (or None)."""
    sources = inputs[:-1]
    a = sources[0]
    patches = plan.patches.get(key, [])
    if key in plan.reverted:
        terms = [(len(sources), 1.0)]  # the original model sits after the inputs
    elif a.tensors[key].dtype not in FLOAT_DTYPES:
        return TensorJob(key, [(0, 1.0)], raw=True, check=False)
    elif key in plan.taken_from_a or recipe.operation == "copy":
        terms = [(0, 1.0)]
    elif recipe.operation == "weighted_sum":
        weights = recipe.block_weights.get(block_of(key), recipe.weights)
        terms = list(enumerate(weights))
    else:  # add_difference: A + m * (B - C)
        (m,) = recipe.block_weights.get(block_of(key), recipe.weights)
        terms = [(0, 1.0), (1, m), (2, -m)]
    weights = [w for _, w in terms]
    convex = all(w >= 0 for w in weights) and sum(weights) <= 1 + 1e-6
    in_dtypes = [inputs[i].tensors[key].dtype for i, _ in terms]
    # A convex combination stays within its inputs' range, so without LoKr deltas it cannot overflow an output
    # dtype at least as wide: the scan is skipped there (NaN inputs pass through unchanged, as in sd-webui).
    safe = convex and not patches and all(RANGE.get(d, 0) <= RANGE[out_st] for d in in_dtypes)
    return TensorJob(key, terms, patches, check=not safe)


def _recipe_metadata(plan: MergePlan, hashes: dict[str, str]) -> dict[str, str]:
    r = plan.recipe

    def entry(path: str) -> dict[str, str]:
        p = Path(path)
        return {"name": p.stem if p.suffix else p.name, "sha256": hashes.get(path, HASH_PLACEHOLDER)[:10]}

    recipe = {
        "operation": r.operation,
        "inputs": [entry(p) for p in r.inputs],
        "weights": r.weights,
        "block_weights": r.block_weights,
        "reverted": r.revert,
        "original": entry(r.original) if r.original else None,
        "lokr": [{**entry(p), "multiplier": m} for p, m in r.lokr],
        "dtype": r.dtype,
        "missing": r.missing,
        "taken_from_a": len(plan.taken_from_a),
        "program": f"kohaku-xl-workbench {__version__}",
    }
    # sd-webui's merge-history key: full SHA-256 -> model name. Keyed by position until the hashes are known, so
    # the placeholder header has the same length as the final one.
    models = {
        hashes.get(p, f"{i:064d}"): {"name": entry(p)["name"]}
        for i, p in enumerate([*r.inputs, *([r.original] if r.original else [])])
    }
    return checkpoint_metadata(plan.arch, {"kxl.merge_recipe": json.dumps(recipe, sort_keys=True),
                                           "sd_merge_models": json.dumps(models, sort_keys=True)})  # fmt: skip


def _hash_plan(inputs: list[ModelSource | None]) -> tuple[dict[str, str], list[bool]]:
    """(hashes already known from the cache, which inputs must hash their file while the merge reads it)."""
    known: dict[str, str] = {}
    wanted = []
    for src in inputs:
        cached = cached_sha256(src.path) if src is not None and src.path.is_file() else None
        if cached:
            known[str(src.path)] = cached
        wanted.append(src is not None and not cached and isinstance(src, SingleFileSource))
    return known, wanted


def _ram_estimate(plan_entries: list[PlannedTensor], shapes: dict[str, SourceTensor], n_inputs: int,
                  out_dtype: str) -> int:  # fmt: skip
    """Peak memory of `run_merge`: per input a read ring (feeds.py), the output tensor, one fp32 copy of the
    largest tensor (only used for LoKr-patched ones, but counted) and the writer's staging buffers."""
    largest_in = max((t.nbytes for t in shapes.values()), default=0)
    largest = max((math.prod(e.shape) for e in plan_entries), default=0)
    ring = largest_in + 2 * SEGMENT_BYTES + ALIGN
    return (RAM_BASELINE + n_inputs * ring + largest * (4 + ST_ITEMSIZE[out_dtype])
            + 2 * SequentialWriter.STAGE_BYTES)  # fmt: skip


def run_merge(recipe: MergeRecipe, out: str | Path, progress: Progress | None = None,
              on_plan: Callable[[MergePlan], None] | None = None) -> MergeResult:  # fmt: skip
    """Plan, then stream the merge into `out` (atomic: nothing under that name unless it completed).

    Raises AlreadyRunning when another live process is merging into `out`; partial files of killed merges into
    `out` are removed first (and reported in the result's warnings)."""
    out = Path(out)
    progress = ensure_progress(progress)
    t0 = time.monotonic()
    progress.stage("Checking inputs")
    plan = plan_merge(recipe, out)
    if on_plan is not None:
        on_plan(plan)
    # One merge per output, CLI and GUI alike: the lock is held from here until the file is renamed into place.
    with _output_lock(out):
        removed = remove_stale_parts(out)
        if removed:
            plan.warnings.append(
                f"removed {len(removed)} partial file(s) left by an interrupted merge into {out.name} "
                f"({sum(size for _, size in removed) / 2**20:,.1f} MiB)"
            )
        check_free_space(out.parent, plan.out_bytes + 16 * 2**20, what="merged checkpoint")
        hashes = _write_merge(recipe, out, plan, progress)
    lokr_hashes = {Path(p).name: full_sha256(p)[:10] for p, _ in recipe.lokr}  # small files
    short = {Path(k).name: v[:10] for k, v in hashes.items()} | lokr_hashes
    return MergeResult(out, plan, time.monotonic() - t0, short)


def lock_path(out: Path) -> Path:
    """The lock file that says which process is writing merge output `out` (ownership.py)."""
    return out.parent / f".{out.name}.kxl-lock"


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    try:
        with owned(lock_path(out), "merge"):
            yield
    except AlreadyRunning as exc:
        # ownership names the folder: name the output file instead, and say what to do about a merge
        message = str(exc).split("\n", 1)[0].removeprefix(f"{exc.path}: ")
        raise AlreadyRunning(message, path=out, hint="wait for that merge to finish (or stop it), or "
                             "choose another output file") from None  # fmt: skip


def remove_stale_parts(out: Path) -> list[tuple[Path, int]]:
    """Delete the temp files (atomic.py: `.<name>.<random>.part`) that killed merges into `out` left behind.

    Only call while holding `out`'s lock: then no live merge owns any of them. The random part never holds a dot,
    so another output's temp files (`.<name>.v2.safetensors.<random>.part`) never match. Returns (path, bytes).
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[^.]+\.part")
    removed = []
    try:
        candidates = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []
    for part in candidates:
        try:
            if not part.is_file() or part.is_symlink():
                continue
            size = part.stat().st_size
            part.unlink()
        except OSError:
            continue  # vanished meanwhile, or not ours to delete: the merge itself does not need it gone
        removed.append((part, size))
    return removed


def _write_merge(recipe: MergeRecipe, out: Path, plan: MergePlan, progress: Progress) -> dict[str, str]:
    """Stream the planned merge into `out` (atomically); return the inputs' full SHA-256 by path."""
    import torch

    sources = [open_source(p) for p in recipe.inputs]
    original = open_source(recipe.original) if recipe.original else None
    everyone = [*sources, *([original] if original else [])]
    # One intra-op thread: the reader threads keep the other core busy (SHA-256), and torch's OpenMP workers
    # spin-waiting against them made the element-wise work twice as slow overall (benchmarks/bench_merge.py).
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    feeds: list[Feed | None] = []
    try:
        out_st = OUT_DTYPES[recipe.dtype]
        out_dtype = torch_dtype(recipe.dtype)
        entries = {e.name: e for e in plan.entries}
        inputs: list[ModelSource | None] = [*sources, original]
        hashes, hash_wanted = _hash_plan(inputs)
        jobs = [
            _job_for(e.name, recipe, plan, inputs, out_st) for e in plan_order(plan.entries, keep_order=True)
        ]
        for i, src in enumerate(inputs):
            keys = [job.key for job in jobs if any(j == i for j, _ in job.terms)]
            feeds.append(None if src is None else open_feed(src, keys, hash_wanted[i]))
        out_buf = torch.empty(max(e.nbytes for e in plan.entries), dtype=torch.uint8)
        limit = RANGE[out_st]
        progress.stage(f"Merging {len(plan.keys):,} tensors")
        done = 0
        with atomic_path(out) as tmp:
            with StreamingWriter(tmp, plan.entries, _recipe_metadata(plan, {}), keep_order=True, direct=True) as writer, \
                    Arithmetic() as arith:  # fmt: skip
                for job in jobs:
                    progress.check_cancelled()
                    entry = entries[job.key]
                    tensors = {i: feeds[i].get(job.key) for i, _ in job.terms}  # type: ignore[union-attr]
                    first = tensors[job.terms[0][0]]
                    if job.raw or (
                        len(job.terms) == 1
                        and job.terms[0][1] == 1.0
                        and not job.patches
                        and first.dtype == out_dtype
                    ):
                        value = first  # a revert, a copy in the output dtype or a non-float: the stored bytes
                    else:
                        value = out_buf[: entry.nbytes].view(out_dtype).view(entry.shape)
                        terms = [(tensors[i], w) for i, w in job.terms]
                        if job.patches:
                            full = arith.full(math.prod(entry.shape)).view(entry.shape)
                            arith.combine(terms, full, None, job.key)
                            _apply_patches(full, job.patches)
                            check_range(full, limit, job.key)
                            value.copy_(full)
                        else:
                            arith.combine(terms, value, limit if job.check else None, job.key)
                    writer.write(job.key, value)
                    for i, _ in job.terms:
                        feeds[i].release(job.key)  # type: ignore[union-attr]
                    done += entry.nbytes
                    progress.update(done, plan.out_bytes, "merging")
            progress.stage("Finishing (input hashes)")
            for src, feed in zip(inputs, feeds, strict=True):
                digest = feed.finish_hash() if feed is not None else None
                if digest is not None:
                    hashes[str(src.path)] = digest  # type: ignore[union-attr]
                    remember_sha256(src.path, digest)  # type: ignore[union-attr]
            # The recipe names each baked LoKr by its file's SHA-256 too (small files: hashed here, cached).
            lokr_hashes = {p: full_sha256(p) for p, _ in recipe.lokr}
            _patch_header(tmp, plan, _recipe_metadata(plan, hashes | lokr_hashes))
    finally:
        for feed in feeds:
            if feed is not None:
                feed.close()
        torch.set_num_threads(torch_threads)
        for s in everyone:
            s.close()
    return hashes


def _patch_header(path: Path, plan: MergePlan, metadata: dict[str, str]) -> None:
    """Rewrite the header with the real hashes; hex digests have the placeholder's length, so offsets hold.

    The header can only shrink: inputs with identical contents share one sd_merge_models entry where the
    placeholder had one per position. The JSON is then padded with spaces (valid JSON, as safetensors pads)."""
    head, _ = build_header(plan.entries, metadata, keep_order=True)
    with open(path, "rb+") as fh:
        old_len = int.from_bytes(fh.read(8), "little")
        new_len = len(head) - 8
        if new_len > old_len:
            raise RuntimeError("merge header grew while patching hashes")
        fh.seek(0)
        fh.write(old_len.to_bytes(8, "little") + head[8:] + b" " * (old_len - new_len))
