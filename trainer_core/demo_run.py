"""`kxl demo run`: the whole Kohaku XL Delta card recipe on the embedded demo workspace, in one call.

Stages, each with an artefact inside the workspace folder:
  1. workspace   `workspace.toml`: `init_demo` when the folder has none; an existing demo workspace is reused;
  2. dataset     `datasets/demo-run-<selection>/`: the card's selection preset scaled to the demo (or every post),
                 the card's filters (no deleted, banned/gold-only or non-image posts) and the card's captions;
  3. merge       `models/kohaku-xl-delta-base.safetensors`: 0.5 gamma + 0.5 beta, the four CLIP embeddings
                 reverted to the original (the card's base);
  4. train       `runs/demo-run/`: the tiny-demo preset (the card's LoKr algorithm) at the concept's learning rates
                 (demo_run_concept.CONCEPT_OPTIMIZER) through `accelerate launch` with N CPU processes (gloo DDP),
                 on the merged base;
  5. bake        `models/kohaku-xl-delta.safetensors`: the final LoKr merged into the base (merge operation copy);
  6. generate    `outputs/demo-run/`: the same card-style prompts and seeds on the merged base (before) and the
                 baked model (after), PNGs with A1111 infotext, a before | after `grid.png` and `demo-run.json`;
                 then the concept figure (demo_run_concept.py): how often each model draws the demo's new artist
                 `hakuframe` where asked and leaves it out elsewhere, read back off pictures in `concept/`.

Resume: a stage whose artefact is there and complete is skipped with a note. When a stage really ran, the stages
that read its artefact run again (DEPENDS). `force` redoes stages 2-6 (the workspace itself is only recreated by
`kxl demo init --force`). An interrupted training (Ctrl+C saves a state) is resumed from its newest state when its
settings did not change.

Scaling the card's selection: the card takes 1,000,000 of the 3,000,000 ids in [0, 3M), 1,000,000 of the 2,000,000
ids in [3M, 5M) and every post from 5M on. Danbooru ids are dense, so that is a third, a half and all of each range;
the demo DB has a few hundred posts spread over the same ids, so each range keeps that fraction of the posts that
pass the filters (rounded, at least one), drawn with the preset's seed and sampling rule.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_text
from .demo_run_concept import (
    CONCEPT_DIR,
    CONCEPT_OPTIMIZER,
    DEFAULT_CONCEPT_PROMPTS,
    MIN_CONCEPT_SIZE,
    ConceptFigure,
    read_concept,
)
from .errors import KxlError, WorkspaceError
from .progress import Progress, ensure_progress
from .workspace import WORKSPACE_FILE, Workspace, load_workspace
from .workspace_queries import MERGED_BASE_STEM

if TYPE_CHECKING:  # typing only: the dataset modules pull in numpy, which the CLI imports lazily
    from .dataset.filters import PostFilters
    from .dataset.selection import SelectionPlan

# The hakuframe concept needs steps: on the card selection (222 pictures, ~20 % by the artist) 700 steps drew its
# frame for 1/7 prompts on an earlier base; 1200 steps draw it for 4/7 on the shipped one (3/7 left out where not
# asked); ~7 min of training on 2 idle cores.
DEFAULT_STEPS = 1200
DEFAULT_PROCESSES = 2
SELECTIONS = ("card", "all")
MERGED_BASE_NAME = f"{MERGED_BASE_STEM}.safetensors"
BAKED_NAME = "kohaku-xl-delta.safetensors"
RUN_NAME = "demo-run"
OUTPUT_NAME = "demo-run"
REPORT_FILE = "demo-run.json"
GRID_FILE = "grid.png"
TRAIN_PRESET = "tiny-demo"
DEFAULT_PROMPTS = 4
PROMPT_SEED = 1234  # prompt i uses seed PROMPT_SEED + i, before and after
NEGATIVE_PROMPT = "worst quality, low quality"
MAX_GENERAL_TAGS = 12
STOP_GRACE_S = 60.0  # how long a stopped trainer may take to save before its group is killed
STAGES = ("workspace", "dataset", "merge", "train", "bake", "generate")
# What each stage reads: when one of these really ran, the stage's old artefact is stale and is made again.
DEPENDS = {
    "workspace": (),
    "dataset": ("workspace",),
    "merge": ("workspace",),
    "train": ("dataset", "merge"),
    "bake": ("merge", "train"),
    "generate": ("dataset", "merge", "bake"),
}


@dataclass
class StageNote:
    name: str
    ran: bool  # False: skipped, its artefact was already complete
    seconds: float
    note: str = ""


@dataclass
class DemoRunReport:
    """Where every artefact went, and what the training did."""

    root: Path
    workspace: Path
    dataset: Path
    merged_base: Path
    run_dir: Path
    lokr: Path
    baked: Path
    output_dir: Path
    grid: Path
    before_images: list[Path] = field(default_factory=list)
    after_images: list[Path] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    dataset_images: int = 0
    steps: int = 0
    world_size: int = 0
    loss_first: float | None = None  # the first step's loss
    loss_last: float | None = None
    loss_first_mean: float | None = None  # mean over the first `loss_window` steps (one step's loss is noisy)
    loss_last_mean: float | None = None
    loss_window: int = 0
    concept: ConceptFigure | None = None  # None: the concept read-back was not asked for (concept_prompts=0)
    stages: list[StageNote] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return json.loads(json.dumps(out, default=str))

    def loss_line(self) -> str:
        if self.loss_first is None or self.loss_last is None:
            return "training loss: no step events"
        line = f"training loss: first step {self.loss_first:.4f}, last step {self.loss_last:.4f}"
        if self.loss_first_mean is not None and self.loss_last_mean is not None:
            line += (
                f"; mean of the first {self.loss_window} steps {self.loss_first_mean:.4f} -> "
                f"last {self.loss_window} {self.loss_last_mean:.4f}"
            )
        return line

    def stages_line(self) -> str:
        parts = [f"{n.name} {n.seconds:.1f}s" if n.ran else f"{n.name} skipped" for n in self.stages]
        return "stages: " + ", ".join(parts)

    def summary_lines(self) -> list[str]:
        """What the CLI prints at the end: one line per artefact, then the loss."""
        rows = [
            ("workspace", self.workspace),
            ("dataset", f"{self.dataset}  ({self.dataset_images} images)"),
            ("merged base", self.merged_base),
            ("training run", f"{self.run_dir}  ({self.steps} steps, {self.world_size} processes)"),
            ("LoKr", self.lokr),
            ("baked model", self.baked),
            ("before images", self.output_dir / "before"),
            ("after images", self.output_dir / "after"),
            ("grid", self.grid),
            ("report", self.output_dir / REPORT_FILE),
        ]
        width = max(len(k) for k, _ in rows) + 1
        lines = [f"  {k + ':':<{width}} {v}" for k, v in rows] + [self.stages_line(), self.loss_line()]
        return lines + ([self.concept.line()] if self.concept is not None else [])


# ------------------------------------------------------------------------------------------------ helpers


class _Stages:
    """Numbers the stages for the progress output and records what each one did."""

    def __init__(self, progress: Progress, force: bool):
        self.progress = progress
        self.force = force
        self.redo = force  # the current stage must run: forced, or one of its inputs was just made again
        self.ran: set[str] = set()
        self.notes: list[StageNote] = []
        self._start = 0.0
        self._name = ""

    def begin(self, name: str, title: str) -> None:
        self.progress.check_cancelled()
        self._name, self._start = name, time.monotonic()
        self.redo = (self.force and name != "workspace") or any(d in self.ran for d in DEPENDS[name])
        self.progress.stage(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {title}")

    def skip(self, reason: str, hint: str = " (--force redoes it)") -> None:
        self.progress.stage(f"  skipped: {reason}{hint}")
        self.notes.append(StageNote(self._name, False, time.monotonic() - self._start, reason))

    def done(self, note: str = "") -> None:
        self.ran.add(self._name)
        self.notes.append(StageNote(self._name, True, time.monotonic() - self._start, note))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _up_to_date(artefact: Path, *inputs: Path | None) -> bool:
    """True when `artefact` exists and is not older than any input (make's rule): it catches inputs replaced
    behind our back, e.g. `kxl demo init --force` between two runs."""
    try:
        made = artefact.stat().st_mtime_ns
    except OSError:
        return False
    for src in inputs:
        try:
            if src is not None and src.stat().st_mtime_ns > made:
                return False
        except OSError:
            return False
    return True


def _quiet(progress: Progress) -> Progress:
    """A Progress that keeps the caller's cancel token but prints nothing (sub-jobs with chatty stages)."""
    return Progress(callback=None, cancel_token=progress.cancel_token)


# ------------------------------------------------------------------------------------------------ 1 workspace


def _workspace(
    root: Path, posts: int, seed: int, image_max_side: int, progress: Progress
) -> tuple[Workspace, bool]:
    from .demo import init_demo

    if (root / WORKSPACE_FILE).is_file():
        ws = load_workspace(root)
        if ws.kind != "demo":
            raise WorkspaceError(
                "holds a user workspace; `kxl demo run` works on the demo workspace only",
                path=root,
                hint="choose an empty folder (the demo is created there) or an existing demo workspace",
            )

        def present(path: Path | None, folder: bool = False) -> bool:
            return path is not None and (path.is_dir() if folder else path.is_file())

        checks = [
            ("metadata DB", present(ws.db_path)),
            ("image shards", present(ws.images_path, folder=True)),
        ]
        checks += [(f"{r} checkpoint", present(ws.checkpoint_path(r))) for r in ("gamma", "beta", "original")]
        missing = [what for what, ok in checks if not ok]
        if missing:
            raise WorkspaceError(
                f"this demo workspace has no {', '.join(missing)}",
                path=root,
                hint=f"recreate it with: kxl demo init --force {root}",
            )
        return ws, False
    return init_demo(root, posts=posts, seed=seed, image_max_side=image_max_side, progress=progress), True


# ------------------------------------------------------------------------------------------------ 2 dataset


def scaled_card_plan(db: Path, filters: PostFilters) -> SelectionPlan:
    """The card's selection preset with its counts scaled to this DB (module docstring)."""
    from .danbooru.db_reader import open_db
    from .dataset.selection import PRESETS, IdRange, SelectionPlan, estimate

    card = PRESETS["kohaku-xl-delta"]
    conn = open_db(db)
    try:
        matches = estimate(conn, card, filters, db)
    finally:
        conn.close()
    ranges = []
    for r in matches:
        rng = r.range
        if rng.count is None or rng.stop is None:
            ranges.append(rng)
            continue
        fraction = rng.count / (rng.stop - rng.start)
        ranges.append(IdRange(rng.start, rng.stop, max(1, round(r.matching * fraction))))
    return SelectionPlan(tuple(ranges), card.seed, "kohaku-xl-delta-demo")


def _dataset(ws: Workspace, selection: str, stages: _Stages, progress: Progress) -> Path:
    from .dataset.export import BuildOptions, build_dataset, partial_build_info
    from .dataset.filters import PostFilters
    from .dataset.selection import PRESETS
    from .dataset.stats import dataset_file

    out = ws.datasets_path / f"demo-run-{selection}"
    stages.begin(
        "dataset", f"Dataset: {'card preset scaled to the demo' if selection == 'card' else 'all posts'}"
    )
    if not stages.redo and _up_to_date(dataset_file(out), ws.db_path, ws.images_path):
        stages.skip(f"{out} is already built")
        return out
    if stages.redo or partial_build_info(out) is None:
        _remove(out)  # ours: a stale, finished or foreign-looking build is rebuilt from scratch
    filters = PostFilters()  # the card's: no deleted, banned / gold-only or non-image posts
    plan = scaled_card_plan(ws.db_path, filters) if selection == "card" else PRESETS["all"]
    opts = BuildOptions(db=ws.db_path, images=ws.images_path, out=out, plan=plan, filters=filters,
                        quality="card", name="kxl")  # fmt: skip
    result = build_dataset(opts, workers=2, on_partial="resume", progress=progress)
    if result.summary.written == 0:
        raise KxlError("the dataset build wrote no image; the demo cannot be trained on it", path=out)
    stages.done(f"{result.summary.written} images")
    return out


def _dataset_images(out: Path) -> int:
    from .dataset.stats import MANIFEST_FILE, read_jsonl

    return len(read_jsonl(out / MANIFEST_FILE))


# ------------------------------------------------------------------------------------------------ 3 merge, 5 bake


def _merge_recipe_of(path: Path) -> dict | None:
    """The merge recipe stored in a checkpoint written by our merge, or None (absent, torn or foreign file)."""
    from .models.safetensors_header import read_header

    if not path.is_file():
        return None
    try:
        header = read_header(path)
        return json.loads(header.metadata.get("kxl.merge_recipe", "null"))
    except (KxlError, ValueError):
        return None


def _merge(ws: Workspace, stages: _Stages, progress: Progress) -> Path:
    from .merge.engine import run_merge
    from .merge.recipe import kohaku_xl_delta_recipe
    from .models.sdxl_layout import EMBEDDING_KEYS

    out = ws.models_path / MERGED_BASE_NAME
    gamma, beta, original = (ws.checkpoint_path(r) for r in ("gamma", "beta", "original"))
    stages.begin("merge", "Merge: 0.5 gamma + 0.5 beta, revert the 4 CLIP embeddings to the original")
    stored = _merge_recipe_of(out)
    if (
        not stages.redo
        and stored is not None
        and _up_to_date(out, gamma, beta, original)
        and [i["name"] for i in stored.get("inputs", [])] == [gamma.stem, beta.stem]
        and sorted(stored.get("reverted", [])) == sorted(EMBEDDING_KEYS)
    ):
        stages.skip(f"{out} holds this merge")
        return out
    _remove(out)
    result = run_merge(kohaku_xl_delta_recipe(gamma, beta, original), out, progress=progress)
    stages.done(f"{len(result.plan.keys)} tensors, {len(result.plan.reverted)} reverted")
    return out


def _bake(ws: Workspace, base: Path, lokr: Path, stages: _Stages, progress: Progress) -> Path:
    from .merge.engine import run_merge
    from .merge.recipe import MergeRecipe

    out = ws.models_path / BAKED_NAME
    stages.begin("bake", "Bake: merge the final LoKr into the merged base")
    stored = _merge_recipe_of(out)
    if (
        not stages.redo
        and stored is not None
        and _up_to_date(out, base, lokr)
        and stored.get("operation") == "copy"
        and [i["name"] for i in stored.get("inputs", [])] == [base.stem]
        and [e["name"] for e in stored.get("lokr", [])] == [lokr.stem]
    ):
        stages.skip(f"{out} holds this bake")
        return out
    _remove(out)
    recipe = MergeRecipe(operation="copy", inputs=[str(base)], lokr=[(str(lokr), 1.0)], dtype="fp16")
    run_merge(recipe, out, progress=progress)
    stages.done()
    return out


# ------------------------------------------------------------------------------------------------ 4 train


def _train_config(base: Path, dataset: Path, steps: int, resolution: int) -> Any:
    from .train.config import load_preset

    cfg = load_preset(TRAIN_PRESET)
    cfg.model.base, cfg.dataset.path = str(base.resolve()), str(dataset.resolve())
    cfg.dataset.resolution = resolution
    cfg.training.max_steps = steps
    for key, value in CONCEPT_OPTIMIZER.items():
        setattr(cfg.optimizer, key, value)
    return cfg


def _step_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; a resumed run repeats the steps after its last saved state: the later value wins."""
    from .train.events import read_events

    out: dict[int, float] = {}
    for e in read_events(run_dir):
        if e.get("type") == "step" and isinstance(e.get("loss"), (int, float)):
            out[int(e["step"])] = float(e["loss"])
    return out


def _finished(run_dir: Path) -> dict | None:
    """The `done` event of a run that trained to its end, or None."""
    from .train.events import read_events

    events = read_events(run_dir)
    last = events[-1] if events else None
    if last and last.get("type") == "done" and last.get("reason") == "finished":
        return last
    return None


def _train_plan(run_dir: Path, wanted: Any, steps: int, processes: int, redo: bool) -> str:
    """One of "skip" (trained with these settings), "resume" (same settings, a saved state) or "fresh".

    The run must also be newer than its base model and its dataset: a run started on older files is stale."""
    from .train.checkpoint import state_dirs
    from .train.config import load_config
    from .train.events import read_run_info

    config = run_dir / "config.toml"
    from .dataset.stats import dataset_file

    if redo or not _up_to_date(config, wanted.base_path, dataset_file(wanted.dataset_path)):
        return "fresh"
    try:
        have = load_config(config)
    except KxlError:
        return "fresh"
    info = read_run_info(run_dir) or {}
    if have.resume_fingerprint() != wanted.resume_fingerprint() or info.get("world_size") != processes:
        return "fresh"
    done = _finished(run_dir)
    final_lokr = run_dir / "checkpoints" / f"{wanted.output.name}.safetensors"
    if done is not None and done.get("final_step") == steps and final_lokr.is_file():
        return "skip"
    states = state_dirs(run_dir / "checkpoints")
    if states and int(states[-1].name.split("-")[-1]) < steps:
        return "resume"
    return "fresh"


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _train(ws: Workspace, base: Path, dataset: Path, steps: int, processes: int, resolution: int,
           stages: _Stages, progress: Progress) -> tuple[Path, Path]:  # fmt: skip
    from .train.events import EVENTS_FILE
    from .train.launch import LaunchPlan, free_port, launch_command
    from .train.runs import EventTail
    from .train.supervisor import Supervisor, raise_if_failed, supervise

    run_dir = ws.runs_path / RUN_NAME
    cfg = _train_config(base, dataset, steps, resolution)
    lokr = run_dir / "checkpoints" / f"{cfg.output.name}.safetensors"
    stages.begin(
        "train", f"Train: LoKr ({TRAIN_PRESET} preset), {steps} steps on {processes} CPU process(es)"
    )
    how = _train_plan(run_dir, cfg, steps, processes, stages.redo)
    if how == "skip":
        stages.skip(f"{run_dir} trained {steps} steps on {processes} process(es)")
        return run_dir, lokr
    if how == "fresh":
        _remove(run_dir)
        run_dir.mkdir(parents=True)
        atomic_write_text(run_dir / "config.toml", cfg.to_toml())
    else:
        progress.stage("  resuming the interrupted training from its newest saved state")
    plan = LaunchPlan(config=run_dir / "config.toml", processes=processes, cpu=True, port=free_port(),
                      mixed_precision=cfg.training.mixed_precision, resume=how == "resume")  # fmt: skip
    argv, env = launch_command(plan)
    # The trainer runs as `python -m trainer_core.train`: make this copy of the package importable from any cwd.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_package_root()), os.environ.get("PYTHONPATH")) if p)
    tail = EventTail(run_dir / EVENTS_FILE, offset=(run_dir / EVENTS_FILE).stat().st_size
                     if (run_dir / EVENTS_FILE).is_file() else 0)  # fmt: skip
    progress.stage(f"  accelerate launch, {processes} process(es); live events: {run_dir / EVENTS_FILE}")
    sup = Supervisor(run_dir, argv, env, tie_to_parent=True, stop_grace_s=STOP_GRACE_S)
    sup.start()
    last_step = 0

    # between polls: live progress; a cancel raises here and supervise() stops the trainer
    def follow() -> None:
        nonlocal last_step
        for e in tail.read():
            if e.get("type") == "step":
                last_step = int(e["step"])
                loss = e.get("loss")
                label = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss n/a"
                progress.update(last_step, steps, f"step {last_step}/{steps}, {label}")
        progress.check_cancelled()

    # Ctrl+C or cancel: the trainer runs in its own session, so supervise() stops it (save, then signals) and
    # re-raises, as any other stage does
    code = supervise(sup, on_tick=follow, say=progress.stage, reraise_interrupt=True)
    outcome = sup.outcome(code)
    raise_if_failed(outcome)
    if _finished(run_dir) is None:
        raise_if_failed(replace(outcome, exit_code=outcome.exit_code or 1,
                                message=outcome.message or "the trainer ended before finishing"))  # fmt: skip
    progress.update(steps, steps, "done")
    stages.done(f"{last_step} steps")
    return run_dir, lokr


# ------------------------------------------------------------------------------------------------ 6 generate


def card_prompt(tags: list[tuple[str, int]], quality: str | None, rating: int, year: str | None,
                max_general: int = MAX_GENERAL_TAGS) -> str | None:  # fmt: skip
    """A prompt in the card's order: `<1girl/1boy/...>, <character>, <series>, <artists>, <special tags>,
    <general tags>` with special = quality, rating, date; None for a post without a count tag (1girl, ...)."""
    from .dataset.captions import (
        KIND_ARTIST,
        KIND_CHARACTER,
        KIND_COPYRIGHT,
        KIND_DROP,
        KIND_GENERAL,
        KIND_SPECIAL,
        RATING_TAGS,
        tag_kind,
    )
    from .tags.text import escape_prompt_text, tag_to_prompt_text

    groups: dict[int, list[str]] = {}
    for name, ttype in tags:
        kind = tag_kind(name, ttype)
        if kind != KIND_DROP:
            groups.setdefault(kind, []).append(tag_to_prompt_text(name))
    if not groups.get(KIND_SPECIAL):
        return None
    special = [quality, *RATING_TAGS.get(rating, ()), year]
    parts = [
        *groups.get(KIND_SPECIAL, []),
        *groups.get(KIND_CHARACTER, []),
        *groups.get(KIND_COPYRIGHT, []),
        *groups.get(KIND_ARTIST, []),
        *(escape_prompt_text(s) for s in special if s),
        *groups.get(KIND_GENERAL, [])[:max_general],
    ]
    return ", ".join(parts)


def demo_prompts(dataset: Path, db: Path, count: int) -> list[str]:
    """`count` card-style prompts from general-rated posts of the dataset, spread evenly over it (deterministic)."""
    from .danbooru.db_reader import open_db, post_ratings, post_tag_rows
    from .dataset.stats import MANIFEST_FILE, read_jsonl

    records = read_jsonl(dataset / MANIFEST_FILE)
    if not records:
        raise KxlError("the dataset has no images to take prompts from", path=dataset)
    conn = open_db(db)
    try:
        ratings = post_ratings(conn, (int(r["id"]) for r in records))
        # General-rated posts only, when there are any: the grid is what a newcomer looks at first.
        records = [r for r in records if ratings.get(int(r["id"])) == 0] or records
        prompts: list[str] = []
        n = len(records)
        for i in range(count):
            # Start at an evenly spaced post and walk forward to the first one with a count tag.
            for j in range(n):
                rec = records[(i * n // count + j) % n]
                text = card_prompt(post_tag_rows(conn, int(rec["id"])), rec.get("quality"),
                                   int(ratings.get(int(rec["id"]), 0)), rec.get("year"))  # fmt: skip
                if text and text not in prompts:
                    prompts.append(text)
                    break
    finally:
        conn.close()
    if not prompts:
        raise KxlError(
            "no post of the dataset has a count tag (1girl, 1boy, ...) to build a prompt", path=dataset
        )
    return prompts


def _grid(before: list[Any], after: list[Any], seeds: list[int], cell: int) -> Any:
    """Rows = prompts, columns = before | after, with a header and the seed of each row."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except (TypeError, OSError):  # Pillow without FreeType: the built-in bitmap font
        font = ImageFont.load_default()
    margin, header, pad = 90, 28, 6
    width = margin + 2 * (cell + pad) + pad
    height = header + len(before) * (cell + pad) + pad
    grid = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(grid)
    for col, label in enumerate(("before: merged base", "after: + trained LoKr")):
        draw.text((margin + pad + col * (cell + pad), 7), label, fill=(240, 190, 90), font=font)
    for row, (b, a, seed) in enumerate(zip(before, after, seeds, strict=True)):
        y = header + row * (cell + pad)
        draw.text((8, y + cell // 2 - 16), f"prompt {row + 1}", fill=(220, 220, 220), font=font)
        draw.text((8, y + cell // 2 + 2), f"seed {seed}", fill=(160, 160, 160), font=font)
        for col, img in enumerate((b, a)):
            # Nearest-neighbour: the grid shows the pixels the model made, only larger.
            tile = img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (margin + pad + col * (cell + pad), y))
    return grid


def _generation_settings(prompts: list[str], seeds: list[int], size: int, steps: int,
                         concept_prompts: int) -> dict[str, Any]:  # fmt: skip
    return {"prompts": prompts, "seeds": seeds, "size": size, "steps": steps, "negative": NEGATIVE_PROMPT,
            "concept_prompts": concept_prompts}  # fmt: skip


def _stored_concept(previous: dict, concept_prompts: int) -> ConceptFigure | None:
    """The concept figure of an earlier report, or None when it has none (or a damaged one)."""
    stored = previous.get("concept")
    if not isinstance(stored, dict):
        return None
    try:
        figure = ConceptFigure(**stored)
    except TypeError:
        return None
    return figure if figure.prompts == concept_prompts else None


def _generate(ws: Workspace, base: Path, baked: Path, dataset: Path, n_prompts: int, size: int, steps: int,
              concept_prompts: int, stages: _Stages,
              progress: Progress) -> tuple[Path, list[Path], list[Path], list[str], list[int], ConceptFigure | None]:  # fmt: skip
    from PIL import Image

    from .dataset.stats import dataset_file
    from .generate.infotext import read_png_parameters, write_png_parameters
    from .generate.pipeline import GenerationRequest, clear_model_cache, generate

    out = ws.outputs_path / OUTPUT_NAME
    grid_path = out / GRID_FILE
    stages.begin("generate", f"Generate: before | after grid, {n_prompts} card-style prompts, fixed seeds")
    prompts = demo_prompts(dataset, ws.db_path, n_prompts)
    seeds = [PROMPT_SEED + i for i in range(len(prompts))]
    settings = _generation_settings(prompts, seeds, size, steps, concept_prompts)
    previous = _read_report(out)
    if (
        not stages.redo
        and _up_to_date(grid_path, base, baked, dataset_file(dataset))
        and previous is not None
        and previous.get("generation") == settings
    ):
        paths = [Path(p) for p in previous.get("before_images", []) + previous.get("after_images", [])]
        concept = _stored_concept(previous, concept_prompts)
        if (
            len(paths) == 2 * len(prompts)
            and all(p.is_file() for p in paths)
            and (concept is not None or not concept_prompts)
        ):
            stages.skip(f"{grid_path} shows these prompts")
            half = len(prompts)
            return grid_path, paths[:half], paths[half:], prompts, seeds, concept
    for rel in ("before", "after", CONCEPT_DIR, GRID_FILE, REPORT_FILE):
        _remove(out / rel)
    quiet = _quiet(progress)
    images: dict[str, list[Path]] = {"before": [], "after": []}
    pil: dict[str, list[Any]] = {"before": [], "after": []}
    total, done = 2 * len(prompts), 0
    try:
        for label, model in (("before", base), ("after", baked)):
            for prompt, seed in zip(prompts, seeds, strict=True):
                progress.update(done, total, f"{label}: seed {seed}")
                req = GenerationRequest(model=model, prompt=prompt, negative=NEGATIVE_PROMPT, steps=steps,
                                        seed=seed, width=size, height=size, out_dir=out / label,
                                        device="cpu", dtype="fp32")  # fmt: skip
                img = generate(req, progress=quiet).images[0]
                images[label].append(img.path)
                pil[label].append(img.image)
                done += 1
        progress.update(total, total, "done")
        grid = _grid(pil["before"], pil["after"], seeds, cell=max(size, 256))
        # As A1111 does for grids: the parameters of the first image, so the grid alone says how it was made.
        write_png_parameters(grid, grid_path, read_png_parameters(images["after"][0]) or "")
        for img in pil["before"] + pil["after"]:
            if isinstance(img, Image.Image):
                img.close()
        concept = None
        if concept_prompts:
            concept = read_concept(base, baked, concept_prompts, size, steps, NEGATIVE_PROMPT, out / CONCEPT_DIR,
                                   progress)  # fmt: skip
            total += 4 * concept_prompts
    finally:
        clear_model_cache()  # two tiny models: free them, the caller may go on with other work
    stages.done(f"{total} images")
    return grid_path, images["before"], images["after"], prompts, seeds, concept


def _read_report(out: Path) -> dict | None:
    try:
        return json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ the recipe


def _loss_summary(report: DemoRunReport) -> None:
    losses = _step_losses(report.run_dir)
    steps = [s for s in sorted(losses) if s <= report.steps]
    if not steps:
        return
    values = [losses[s] for s in steps]
    window = max(1, min(20, len(values) // 10))
    report.loss_first, report.loss_last = values[0], values[-1]
    report.loss_window = window
    report.loss_first_mean = sum(values[:window]) / window
    report.loss_last_mean = sum(values[-window:]) / window


def run_demo_recipe(
    root: str | Path,
    steps: int = DEFAULT_STEPS,
    processes: int = DEFAULT_PROCESSES,
    progress: Progress | None = None,
    *,
    force: bool = False,
    selection: str = "card",
    posts: int = 400,
    seed: int = 0,
    image_max_side: int = 512,
    resolution: int = 128,
    prompts: int = DEFAULT_PROMPTS,
    image_size: int = 128,
    sample_steps: int = 20,
    concept_prompts: int = DEFAULT_CONCEPT_PROMPTS,
) -> DemoRunReport:
    """Run the six stages (module docstring) on the demo workspace in `root` and report where everything went.

    `posts`, `seed` and `image_max_side` only matter when the workspace is created; `resolution` is the training
    bucket resolution, `image_size` and `sample_steps` the generated images' side and sampling steps;
    `concept_prompts` the prompts per set of the concept read-back (0: none).
    """
    if steps < 1:
        raise KxlError(f"--steps must be at least 1 (got {steps})")
    if processes < 1:
        raise KxlError(f"--processes must be at least 1 (got {processes})")
    if selection not in SELECTIONS:
        raise KxlError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    if prompts < 1:
        raise KxlError(f"--prompts must be at least 1 (got {prompts})")
    if concept_prompts < 0:
        raise KxlError(f"concept prompts must be 0 or more (got {concept_prompts})")
    if concept_prompts and image_size < MIN_CONCEPT_SIZE:
        raise KxlError(
            f"the concept read-back needs images of at least {MIN_CONCEPT_SIZE} px (got {image_size})"
        )
    started = time.monotonic()
    progress = ensure_progress(progress)
    root = Path(root).expanduser().resolve()
    stages = _Stages(progress, force)

    stages.begin("workspace", f"Workspace: {root}")
    ws, created = _workspace(root, posts, seed, image_max_side, progress)
    if created:
        stages.done("created the demo workspace")
    else:
        stages.skip("reusing the existing demo workspace", hint="")
    dataset = _dataset(ws, selection, stages, progress)
    merged = _merge(ws, stages, progress)
    if ws.checkpoints.get("base") is None:  # the GUI's Train and Generate tabs offer it as the base model
        ws.checkpoints["base"] = str(merged.relative_to(ws.root))
        ws.save()
    run_dir, lokr = _train(ws, merged, dataset, steps, processes, resolution, stages, progress)
    baked = _bake(ws, merged, lokr, stages, progress)
    grid, before, after, used_prompts, seeds, concept = _generate(ws, merged, baked, dataset, prompts, image_size,
                                                                  sample_steps, concept_prompts, stages,
                                                                  progress)  # fmt: skip

    finished = _finished(run_dir) or {}
    report = DemoRunReport(
        root=root, workspace=root / WORKSPACE_FILE, dataset=dataset, merged_base=merged, run_dir=run_dir,
        lokr=lokr, baked=baked, output_dir=grid.parent, grid=grid, before_images=before, after_images=after,
        prompts=used_prompts, seeds=seeds, dataset_images=_dataset_images(dataset),
        steps=int(finished.get("final_step", 0)), world_size=int(finished.get("world_size", 0)),
        concept=concept, stages=stages.notes,
    )  # fmt: skip
    _loss_summary(report)
    report.seconds = time.monotonic() - started
    data = report.to_dict()
    data["generation"] = _generation_settings(used_prompts, seeds, image_size, sample_steps, concept_prompts)
    atomic_write_text(grid.parent / REPORT_FILE, json.dumps(data, indent=2, ensure_ascii=False))
    return report
