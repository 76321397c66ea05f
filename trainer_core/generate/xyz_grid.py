"""X/Y/Z plot: one image per combination of up to three axes, assembled into a labelled grid (A1111's script).

The natural way to judge a training run is a grid over its saved states, so besides A1111's axes (Prompt S/R,
Seed, Steps, CFG Scale, Sampler, Schedule type, Checkpoint name) there are LoKr (a file per value), LoKr strength
and Run states (a run folder: its saved LoKrs in step order, the final one last).

Values are written as in A1111: comma separated (CSV quoting for values holding commas), and for numbers ranges
`1-5`, `1-10 (+3)` (step) and `1-10 [4]` (count). Cells run grouped by checkpoint, then LoKr, so each model loads
once per checkpoint value. Everything is written into a hidden folder beside the output and renamed into place at
the end: a cancelled or failed grid leaves no grid file and no half set of cells.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import KxlError
from ..progress import CancelToken, Progress
from .lokr_apply import LokrUse
from .pipeline import GenerationRequest, generate

INT_AXES = ("Seed", "Steps")
FLOAT_AXES = ("CFG Scale", "LoKr strength")
TEXT_AXES = ("Prompt S/R", "Sampler", "Schedule type", "Checkpoint name", "LoKr", "Run states")
AXIS_KINDS = (*INT_AXES, *FLOAT_AXES, *TEXT_AXES)
"""Axis names as the Generate tab and `kxl generate --grid` offer them."""

GRID_FILE = "grid.png"
CELLS_JSON = "grid.json"

_INT_RANGE = re.compile(r"^\s*([+-]?\d+)\s*-\s*([+-]?\d+)(?:\s*\(([+-]\d+)\s*\))?\s*$")
_FLOAT_RANGE = re.compile(
    r"^\s*([+-]?\d+(?:\.\d*)?)\s*-\s*([+-]?\d+(?:\.\d*)?)(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*$"
)
_COUNT_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*-\s*([+-]?\d+(?:\.\d*)?)\s*\[(\d+)\]\s*$")
_STATE_STEP = re.compile(r"-step(\d+)$")


@dataclass(frozen=True)
class AxisValue:
    label: str  # what the grid writes beside the row/column
    value: Any  # what the cell's request gets


@dataclass
class Axis:
    kind: str
    values: list[AxisValue]


def parse_axis(kind: str, text: str, *, resolve_model: Callable[[str], Path] | None = None) -> Axis:
    """An axis from its A1111-style value list. `resolve_model` turns checkpoint / LoKr names into paths (the
    workspace's models; default: the text is a path). Raises KxlError naming the axis and the bad value."""
    if kind not in AXIS_KINDS:
        raise KxlError(f"unknown grid axis {kind!r}; choose one of {', '.join(AXIS_KINDS)}")
    items = _split_values(text)
    if not items:
        raise KxlError(f"grid axis {kind!r} has no values")
    resolve = resolve_model or (lambda name: Path(name).expanduser())
    if kind in INT_AXES or kind in FLOAT_AXES:
        numbers = [n for item in items for n in _expand_numbers(kind, item, integer=kind in INT_AXES)]
        return Axis(kind, [AxisValue(f"{kind}: {_fmt(n)}", n) for n in numbers])
    if kind == "Prompt S/R":
        return Axis(kind, [AxisValue(item, (items[0], item)) for item in items])
    if kind in ("Sampler", "Schedule type"):
        from .samplers import SAMPLERS, SCHEDULES

        known = SAMPLERS if kind == "Sampler" else SCHEDULES
        unknown = [item for item in items if item not in known]
        if unknown:  # found now, not at the first cell that uses it
            raise KxlError(
                f"grid axis {kind!r}: unknown {kind.lower()} {unknown[0]!r}; choose from {', '.join(known)}"
            )
        return Axis(kind, [AxisValue(item, item) for item in items])
    if kind == "Run states":
        values = [v for item in items for v in run_state_values(resolve(item))]
        return Axis("LoKr", values)
    values = []
    for item in items:
        if kind == "LoKr" and item.lower() == "none":
            values.append(AxisValue("no LoKr", None))
            continue
        path = resolve(item)
        if not path.is_file():
            raise KxlError(f"grid axis {kind!r}: no file for {item!r}", path=path)
        values.append(AxisValue(path.stem, path))
    return Axis(kind, values)


def run_state_values(run_dir: Path) -> list[AxisValue]:
    """A training run's saved LoKrs (`checkpoints/<name>-stepN.safetensors`, then the final `<name>.safetensors`)
    in step order, labelled by step."""
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    if not folder.is_dir():
        raise KxlError("not a training run folder (no checkpoints/ in it)", path=run_dir)
    steps, finals = [], []
    for path in folder.glob("*.safetensors"):
        match = _STATE_STEP.search(path.stem)
        if match:
            steps.append((int(match.group(1)), path))
        else:
            finals.append(path)
    values = [AxisValue(f"step {step}", path) for step, path in sorted(steps)]
    values += [AxisValue(f"final ({p.stem})", p) for p in sorted(finals)]
    if not values:
        raise KxlError("the run has saved no LoKr yet", path=folder)
    return values


def _split_values(text: str) -> list[str]:
    # A1111 reads the list with the csv module, so "a, b" and quoted values holding commas both work.
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    return [v.strip() for row in rows for v in row if v.strip()]


def _expand_numbers(kind: str, item: str, *, integer: bool) -> list[float | int]:
    cast = int if integer else float
    count = _COUNT_RANGE.match(item)
    if count:
        start, end, n = float(count.group(1)), float(count.group(2)), int(count.group(3))
        if n < 1:
            raise KxlError(f"grid axis {kind!r}: {item!r} asks for no values")
        points = [start + (end - start) * i / (n - 1) for i in range(n)] if n > 1 else [start]
        return [int(round(p)) if integer else round(p, 6) for p in points]
    rng = (_INT_RANGE if integer else _FLOAT_RANGE).match(item)
    if rng:
        start, end = cast(rng.group(1)), cast(rng.group(2))
        step = cast(rng.group(3)) if rng.group(3) else (1 if end >= start else -1)
        if step == 0 or (end - start) * step < 0:
            raise KxlError(f"grid axis {kind!r}: the range {item!r} never reaches its end")
        out, value = [], start
        while (value <= end + 1e-9) if step > 0 else (value >= end - 1e-9):
            out.append(value if integer else round(value, 6))
            value += step
            if len(out) > 1000:
                raise KxlError(f"grid axis {kind!r}: the range {item!r} has more than 1000 values")
        return out
    try:
        return [cast(item)]
    except ValueError:
        raise KxlError(f"grid axis {kind!r}: {item!r} is not a {'whole ' if integer else ''}number") from None


def _fmt(n: float | int) -> str:
    return str(n) if isinstance(n, int) else f"{n:g}"


def apply_value(request: GenerationRequest, kind: str, value: Any) -> GenerationRequest:
    """The request of one cell: `request` with one axis value applied."""
    if kind == "Seed":
        return replace(request, seed=int(value))
    if kind == "Steps":
        return replace(request, steps=int(value))
    if kind == "CFG Scale":
        return replace(request, cfg=float(value))
    if kind == "Sampler":
        return replace(request, sampler=value)
    if kind == "Schedule type":
        return replace(request, schedule=value)
    if kind == "Checkpoint name":
        return replace(request, model=Path(value))
    if kind == "Prompt S/R":
        search, replacement = value
        return replace(request, prompt=request.prompt.replace(search, replacement),
                       negative=request.negative.replace(search, replacement))  # fmt: skip
    if kind == "LoKr":
        strength = request.lokrs[-1].multiplier if request.lokrs else 1.0
        return replace(request, lokrs=[] if value is None else [LokrUse(Path(value), strength)])
    if kind == "LoKr strength":
        return replace(request, lokrs=[replace(u, multiplier=float(value)) for u in request.lokrs])
    raise KxlError(f"unknown grid axis {kind!r}")


@dataclass
class GridCell:
    x: int
    y: int
    z: int
    request: GenerationRequest
    file: str = ""
    infotext: str = ""
    seed: int = 0


@dataclass
class GridResult:
    folder: Path  # holds grid.png, grid.json and the cell PNGs
    grid: Path
    cells: list[GridCell] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan_cells(
    request: GenerationRequest, x: Axis, y: Axis | None = None, z: Axis | None = None
) -> list[GridCell]:
    """Every cell's request, in the order they run: grouped by checkpoint, then LoKr file, so models load once
    per checkpoint value. A random seed (-1) is drawn once, so every cell shares it unless Seed is an axis."""
    import random

    from .pipeline import MAX_SEED

    if request.seed == -1:
        request = replace(request, seed=random.randrange(MAX_SEED))
    axes = [a for a in (x, y, z) if a is not None]
    for axis in axes:
        if axis.kind == "LoKr strength" and not request.lokrs and not any(a.kind == "LoKr" for a in axes):
            raise KxlError("the LoKr strength axis needs a LoKr: add one to the request or a LoKr axis")
    if "LoKr strength" in [a.kind for a in axes] and "LoKr" in [a.kind for a in axes]:
        # the strength must apply after the LoKr file is chosen
        axes.sort(key=lambda a: a.kind == "LoKr strength")
    ys = y.values if y is not None else [AxisValue("", None)]
    zs = z.values if z is not None else [AxisValue("", None)]
    cells = []
    for zi, zv in enumerate(zs):
        for yi, yv in enumerate(ys):
            for xi, xv in enumerate(x.values):
                cell_request = request
                chosen = {id(x): xv, id(y): yv, id(z): zv}
                for axis in axes:
                    cell_request = apply_value(cell_request, axis.kind, chosen[id(axis)].value)
                cells.append(GridCell(xi, yi, zi, cell_request))
    return sorted(cells, key=lambda c: (str(c.request.model), [str(u.path) for u in c.request.lokrs]))


def run_grid(
    request: GenerationRequest,
    x: Axis,
    y: Axis | None,
    z: Axis | None,
    out_dir: Path,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> GridResult:
    """Generate every cell and write `out_dir` (a new folder): grid.png (labelled, the first cell's infotext as
    its parameters), grid.json (axes and every cell's infotext and file) and the cell PNGs."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise KxlError("the grid folder already exists; choose a new one", path=out_dir)
    cells = plan_cells(request, x, y, z)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    warnings: list[str] = []
    try:
        for k, cell in enumerate(cells, 1):
            if cancel is not None:
                cancel.check()
            if progress is not None:
                progress.stage(f"cell {k}/{len(cells)}: {_cell_label(cell, x, y, z)}")
            result = generate(
                replace(cell.request, out_dir=work, batch_count=1, batch_size=1), progress, cancel
            )
            image = result.images[0]
            name = f"cell-{cell.z:02d}-{cell.y:02d}-{cell.x:02d}.png"
            Path(image.path).rename(work / name)
            cell.file, cell.infotext, cell.seed = name, image.infotext, image.seed
            warnings += [w for w in result.warnings if w not in warnings]
        if progress is not None:
            progress.stage("assembling the grid")
        cells.sort(key=lambda c: (c.z, c.y, c.x))
        _write_grid(work / GRID_FILE, cells, x, y, z)
        _write_json(work / CELLS_JSON, cells, x, y, z)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return GridResult(out_dir, out_dir / GRID_FILE, cells, warnings)


def _cell_label(cell: GridCell, x: Axis, y: Axis | None, z: Axis | None) -> str:
    parts = [x.values[cell.x].label]
    if y is not None:
        parts.append(y.values[cell.y].label)
    if z is not None:
        parts.append(z.values[cell.z].label)
    return ", ".join(p for p in parts if p)


def _write_json(path: Path, cells: list[GridCell], x: Axis, y: Axis | None, z: Axis | None) -> None:
    def axis(a: Axis | None) -> dict[str, Any] | None:
        return None if a is None else {"kind": a.kind, "labels": [v.label for v in a.values]}

    data = {
        "x": axis(x),
        "y": axis(y),
        "z": axis(z),
        "cells": [
            {"x": c.x, "y": c.y, "z": c.z, "file": c.file, "seed": c.seed, "infotext": c.infotext}
            for c in cells
        ],  # fmt: skip
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def _write_grid(path: Path, cells: list[GridCell], x: Axis, y: Axis | None, z: Axis | None) -> None:
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    folder = path.parent
    tiles = {(c.z, c.y, c.x): Image.open(folder / c.file).convert("RGB") for c in cells}
    cw = max(t.width for t in tiles.values())
    ch = max(t.height for t in tiles.values())
    font = ImageFont.load_default(size=max(12, min(cw, ch) // 10))
    pad = 6
    line = font.getbbox("Ag")[3] + pad
    n_x, n_y = len(x.values), (len(y.values) if y is not None else 1)
    n_z = len(z.values) if z is not None else 1
    left = (max(font.getlength(v.label) for v in y.values) + 2 * pad) if y is not None else 0
    top = line + pad
    title = line + pad if z is not None else 0
    block_h = title + top + n_y * ch
    sheet = Image.new("RGB", (int(left + n_x * cw), n_z * block_h), "white")
    draw = ImageDraw.Draw(sheet)
    for zi in range(n_z):
        y0 = zi * block_h
        if z is not None:
            draw.text((pad, y0 + pad // 2), z.values[zi].label, fill="black", font=font)
        for xi, xv in enumerate(x.values):
            text_w = font.getlength(xv.label)
            draw.text(
                (left + xi * cw + (cw - text_w) / 2, y0 + title + pad // 2), xv.label, fill="black", font=font
            )
        for yi in range(n_y):
            if y is not None:
                draw.text((pad, y0 + title + top + yi * ch + ch / 2 - line / 2), y.values[yi].label, fill="black",
                          font=font)  # fmt: skip
            for xi in range(n_x):
                sheet.paste(tiles[(zi, yi, xi)], (int(left + xi * cw), y0 + title + top + yi * ch))
    info = PngInfo()
    info.add_text("parameters", cells[0].infotext)
    sheet.save(path, pnginfo=info)
