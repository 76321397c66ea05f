"""End to end: `run_demo_recipe` walks the card's recipe on a small demo workspace, every stage for real.

One short run (120 posts, 64 px, 8 training steps on 2 CPU processes) is shared by the tests of this module. It is
first cancelled during training (the trainer's process group must be gone, with a saved state), then run again:
the workspace, dataset and merge are reused and the training resumes. A third call finds everything complete.
"""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from trainer_core.errors import Cancelled, KxlError, WorkspaceError  # noqa: E402
from trainer_core.progress import CancelToken, Progress  # noqa: E402

STEPS = 8
CANCEL_AT = 2
SHORT = dict(
    steps=STEPS,
    processes=2,
    posts=120,
    image_max_side=128,
    resolution=64,
    prompts=2,
    image_size=64,
    sample_steps=6,
    concept_prompts=2,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(root, facts about the cancelled run, stage lines of the resumed run, its report, the all-skipped report)."""
    from trainer_core.demo_run import run_demo_recipe
    from trainer_core.train.events import read_events
    from trainer_core.train.runs import checkpoint_states, group_members, read_launch_info

    root = tmp_path_factory.mktemp("demo-run") / "ws"
    token = CancelToken()
    stages: list[str] = []

    def watch(ev) -> None:
        if ev.total is None and ev.done == 0:
            stages.append(ev.message)
        elif ev.message.startswith("step ") and ev.done >= CANCEL_AT:
            token.cancel()

    with pytest.raises(Cancelled):
        run_demo_recipe(
            root, progress=Progress(callback=watch, cancel_token=token, min_interval_s=0), **SHORT
        )
    run_dir = root / "runs" / "demo-run"
    pgid = read_launch_info(run_dir)["pgid"]
    cancelled = {
        "alive": group_members(pgid),
        "last_event": read_events(run_dir)[-1],
        "states": [s.step for s in checkpoint_states(run_dir)],
        "stages": list(stages),
    }
    stages.clear()
    report = run_demo_recipe(root, progress=Progress(callback=watch, min_interval_s=0), **SHORT)
    resumed_stages = list(stages)
    again = run_demo_recipe(root, **SHORT)
    return root, cancelled, resumed_stages, report, again


def test_cancel_stops_the_trainer_group_and_keeps_a_state(demo):
    _, cancelled, resumed_stages, report, _ = demo
    assert cancelled["alive"] == []  # launcher and both ranks are gone
    assert cancelled["states"] and CANCEL_AT <= cancelled["states"][-1] < STEPS
    last = cancelled["last_event"]  # the trainer saved and finished cleanly, it was not killed
    assert last["type"] == "done" and last["reason"] == "stopped" and last["step"] == cancelled["states"][-1]
    assert cancelled["stages"][:2] == [
        f"[1/6] Workspace: {report.root}",
        "Generating metadata DB (120 posts)",
    ]
    # The second call reuses what is complete and resumes the interrupted training.
    assert "  skipped: reusing the existing demo workspace" in resumed_stages
    assert any(
        s.startswith("  skipped: ") and "datasets/demo-run-card is already built" in s for s in resumed_stages
    )
    assert any(s.startswith("  skipped: ") and "holds this merge" in s for s in resumed_stages)
    assert "  resuming the interrupted training from its newest saved state" in resumed_stages
    ran = {n.name: n.ran for n in report.stages}
    assert ran == {"workspace": False, "dataset": False, "merge": False, "train": True, "bake": True,
                   "generate": True}  # fmt: skip


def test_dataset_is_the_scaled_card_selection_with_card_captions(demo):
    import tomllib

    from trainer_core.dataset.filters import PostFilters
    from trainer_core.dataset.selection import PRESETS, estimate

    root, _, _, report, _ = demo
    db = root / "danbooru" / "danbooru2023.db"
    info = tomllib.loads((report.dataset / "kxl-dataset.toml").read_text(encoding="utf-8"))
    conn = sqlite3.connect(db)
    try:
        matching = [r.matching for r in estimate(conn, PRESETS["kohaku-xl-delta"], PostFilters(), db)]
        manifest = [json.loads(line) for line in (report.dataset / "manifest.jsonl").read_text().splitlines()]
        rows = {
            r[0]: r[1:]
            for r in conn.execute("SELECT id, is_deleted, is_banned, file_url, file_ext FROM post").fetchall()
        }
    finally:
        conn.close()
    assert info["selection"] == {
        "seed": 1,
        "preset": "kohaku-xl-delta-demo",
        "ranges": [
            {"start": 0, "stop": 3_000_000, "count": max(1, round(matching[0] / 3))},
            {"start": 3_000_000, "stop": 5_000_000, "count": max(1, round(matching[1] / 2))},
            {"start": 5_000_000, "count": "all"},
        ],
    }
    assert (
        info["filters"]["skip_deleted"] and info["filters"]["skip_banned"] and info["filters"]["images_only"]
    )
    assert info["captions"]["quality"] == "card" and info["captions"]["quality_percentiles"] == [
        95,
        85,
        75,
        50,
        25,
        10,
    ]
    assert report.dataset_images == len(manifest) == info["summary"]["written"] > 10
    for rec in manifest:
        deleted, banned, url, ext = rows[rec["id"]]
        assert not deleted and not banned and url and ext in ("jpg", "jpeg", "png", "webp")
        caption = (report.dataset / rec["file"]).with_suffix(".txt").read_text(encoding="utf-8")
        assert caption == rec["caption"] and "|||" in caption


def test_merge_reverts_embeddings_and_averages_the_rest(demo):
    from safetensors import safe_open

    from trainer_core.models.sdxl_layout import EMBEDDING_KEYS

    root, _, _, report, _ = demo
    models = root / "models"

    def tensor(path, key):
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(key).float()

    gamma, beta, original = (
        models / f"kxl-tiny-{n}.safetensors" for n in ("gamma-rev2", "beta7", "sdxl-base")
    )
    for key in EMBEDDING_KEYS.values():
        assert tensor(report.merged_base, key).equal(tensor(original, key)), key
        assert not tensor(gamma, key).equal(tensor(original, key))  # there was something to revert
    key = "model.diffusion_model.input_blocks.0.0.weight"
    expected = (0.5 * tensor(gamma, key) + 0.5 * tensor(beta, key)).half().float()
    assert (tensor(report.merged_base, key) - expected).abs().max().item() <= 1e-3


def test_training_ran_two_ddp_processes_and_the_lokr_loads(demo):
    from trainer_core.lokr.file import read_lokr
    from trainer_core.train.events import read_events, read_run_info

    _, _, _, report, _ = demo
    events = read_events(report.run_dir)
    starts = [e for e in events if e["type"] == "status" and e["message"] == "starting"]
    assert len(starts) == 2 and all(
        e["world_size"] == 2 for e in starts
    )  # the cancelled launch + the resumed one
    assert any("resumed_from" in e for e in events if e["type"] == "status")
    assert sorted({e["step"] for e in events if e["type"] == "step"}) == list(range(1, STEPS + 1))
    done = events[-1]
    assert done["type"] == "done" and done["reason"] == "finished" and done["final_step"] == STEPS
    assert done["world_size"] == 2 and len(set(done["param_digests"])) == 1
    assert read_run_info(report.run_dir)["world_size"] == 2
    assert report.world_size == 2 and report.steps == STEPS
    assert report.loss_first is not None and report.loss_last is not None and np.isfinite(report.loss_last)
    lokr = read_lokr(report.lokr, "kxl-demo")
    assert lokr.modules and lokr.unmatched == []


def test_baked_model_loads_and_differs_from_the_merged_base(demo):
    from safetensors import safe_open

    from trainer_core.models.loading import load_sdxl

    _, _, _, report, _ = demo
    with safe_open(str(report.baked), "pt") as f:
        recipe = json.loads(f.metadata()["kxl.merge_recipe"])
        baked = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    assert recipe["operation"] == "copy"
    assert [i["name"] for i in recipe["inputs"]] == ["kohaku-xl-delta-base"]
    assert [e["name"] for e in recipe["lokr"]] == ["tiny-demo-lokr"]
    with safe_open(str(report.merged_base), "pt") as f:
        assert set(f.keys()) == set(baked)
        changed = [k for k in baked if not f.get_tensor(k).equal(baked[k])]
    assert any(k.startswith("model.diffusion_model.") for k in changed)
    assert any(k.startswith("conditioner.embedders.0.") for k in changed)  # the LoKr trains TE1 too
    comps = load_sdxl(report.baked, dtype="fp32", device="cpu")
    assert comps.arch == "kxl-demo"  # the demo's trained model


def test_grid_compares_the_same_prompts_and_seeds_before_and_after(demo):
    from PIL import Image

    from trainer_core.dataset.captions import SPECIAL_TAGS
    from trainer_core.generate.infotext import parse_infotext, read_png_parameters

    _, _, _, report, _ = demo
    assert len(report.before_images) == len(report.after_images) == len(report.prompts) == 2
    assert report.seeds == [1234, 1235]
    for prompt, seed, before, after in zip(report.prompts, report.seeds, report.before_images,
                                           report.after_images, strict=True):  # fmt: skip
        assert prompt.split(", ")[0].replace(" ", "_") in SPECIAL_TAGS  # the card's <1girl/1boy/...> first
        assert ", safe, " in prompt  # general-rated posts only; quality before rating before year
        pb, pa = (parse_infotext(read_png_parameters(p)) for p in (before, after))
        assert pb["Prompt"] == pa["Prompt"] == prompt
        assert (
            pb["Seed"] == pa["Seed"] == str(seed)
            and (pb["Size-1"], pb["Size-2"]) == ("64", "64")
            and pb["Steps"] == "6"
        )
        assert pb["Model"] == "kohaku-xl-delta-base" and pa["Model"] == "kohaku-xl-delta"
        with Image.open(before) as b, Image.open(after) as a:
            diff = np.abs(np.asarray(b, np.int16) - np.asarray(a, np.int16))
        assert b.size == (64, 64) and diff.max() > 0  # the LoKr changed the picture
    with Image.open(report.grid) as grid:
        assert grid.size == (90 + 2 * (256 + 6) + 6, 28 + 2 * (256 + 6) + 6)
        assert "Seed: 1234" in grid.info["parameters"]
    saved = json.loads((report.output_dir / "demo-run.json").read_text(encoding="utf-8"))
    assert (
        saved["grid"] == str(report.grid) and saved["world_size"] == 2 and saved["prompts"] == report.prompts
    )


def test_report_has_the_concept_figure_read_off_its_pictures(demo):
    """The report says how often each model drew the hakuframe frame where asked and left it out elsewhere, and
    those counts are what the reader sees in the concept pictures kept next to the grid."""
    from PIL import Image

    from trainer_core.demo_picture_reader import read_picture
    from trainer_core.generate.infotext import parse_infotext, read_png_parameters

    _, _, _, report, again = demo
    figure = report.concept
    assert figure is not None and figure.prompts == 2
    for label in ("before", "after"):
        pngs = sorted((report.output_dir / "concept" / label).glob("*.png"))
        assert len(pngs) == 4  # 2 hakuframe prompts, then 2 without the artist
        infos = [parse_infotext(read_png_parameters(p)) for p in pngs]
        assert ["hakuframe" in i["Prompt"] for i in infos] == [True, True, False, False]
        assert {i["CFG scale"] for i in infos} == {"3"} and {i["Size-1"] for i in infos} == {"64"}
        framed = []
        for path in pngs:
            with Image.open(path) as img:
                framed.append(read_picture(img).has_concept)
        assert getattr(figure, f"concept_{label}") == sum(framed[:2])
        assert getattr(figure, f"specificity_{label}") == 2 - sum(framed[2:])
    saved = json.loads((report.output_dir / "demo-run.json").read_text(encoding="utf-8"))
    assert saved["concept"] == {"prompts": 2, "cfg": 3.0, "concept_before": figure.concept_before,
                                "concept_after": figure.concept_after,
                                "specificity_before": figure.specificity_before,
                                "specificity_after": figure.specificity_after}  # fmt: skip
    line = report.summary_lines()[-1]
    assert line.startswith(
        f"hakuframe concept: frame drawn for {figure.concept_before}/2 "
        f"({50 * figure.concept_before} %) -> {figure.concept_after}/2"
    )
    assert again.concept == figure  # a skipped generate stage keeps the figure of the run that made it


def test_a_complete_run_is_skipped_stage_by_stage(demo):
    _, _, _, report, again = demo
    assert [n.ran for n in again.stages] == [False] * 6
    assert again.grid == report.grid and again.after_images == report.after_images
    assert again.loss_last == report.loss_last and again.world_size == 2


def test_an_artefact_older_than_an_input_is_stale(tmp_path):
    from trainer_core.demo_run import _up_to_date

    src, out = tmp_path / "gamma.safetensors", tmp_path / "merged.safetensors"
    src.write_bytes(b"a")
    out.write_bytes(b"b")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    os.utime(out, ns=(2_000_000_000, 2_000_000_000))
    assert _up_to_date(out, src, None)
    os.utime(src, ns=(3_000_000_000, 3_000_000_000))  # e.g. `kxl demo init --force` rewrote the checkpoints
    assert not _up_to_date(out, src)
    assert not _up_to_date(out, tmp_path / "gone.safetensors")
    assert not _up_to_date(tmp_path / "never-made.safetensors", src)


def test_card_prompt_follows_the_card_tag_order():
    from trainer_core.danbooru.schema import TagType
    from trainer_core.demo_run import card_prompt

    tags = [("long_hair", TagType.GENERAL), ("kohaku_(artist)", TagType.ARTIST), ("1girl", TagType.GENERAL),
            ("highres", TagType.META), ("umamusume", TagType.COPYRIGHT), ("rice_shower_(umamusume)",
            TagType.CHARACTER), ("solo", TagType.GENERAL), ("banned_artist", TagType.ARTIST)]  # fmt: skip
    assert card_prompt(tags, "masterpiece", 3, "newest") == (
        r"1girl, rice shower \(umamusume\), umamusume, kohaku \(artist\), masterpiece, explicit, nsfw, newest, "
        "long hair, solo"
    )
    assert card_prompt(tags[:2], "masterpiece", 0, "newest") is None  # no count tag: not a card-style subject


def test_refuses_a_user_workspace_and_bad_settings(make_workspace, tmp_path):
    from trainer_core.demo_run import run_demo_recipe

    root = make_workspace()
    with pytest.raises(WorkspaceError, match="user workspace"):
        run_demo_recipe(root, steps=1)
    with pytest.raises(KxlError, match="--steps must be at least 1"):
        run_demo_recipe(tmp_path / "x", steps=0)
    with pytest.raises(KxlError, match="--processes must be at least 1"):
        run_demo_recipe(tmp_path / "x", processes=0)
    with pytest.raises(KxlError, match="concept read-back needs images of at least 64 px"):
        run_demo_recipe(tmp_path / "x", image_size=32)
    assert not (tmp_path / "x").exists()


def test_cli_reports_bad_steps(tmp_path, capsys):
    from trainer_core.cli import main

    assert main(["demo", "run", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "error: --steps must be at least 1 (got 0)" in capsys.readouterr().err


def test_the_cli_says_the_recipes_default_steps():
    import contextlib
    import io

    from trainer_core.cli import main as kxl_main
    from trainer_core.demo_run import DEFAULT_STEPS

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        kxl_main(["demo", "run", "--help"])
    assert f"(default {DEFAULT_STEPS})" in " ".join(out.getvalue().split())
