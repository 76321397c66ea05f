"""The Dataset wizard's form state without Qt: what it asks the engine for, presets, round trips, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from kxl_gui.state.dataset_form import CUSTOM_PRESET, DatasetForm, RangeRow
from trainer_core.dataset.export import BuildOptions
from trainer_core.dataset.filters import PostFilters
from trainer_core.dataset.selection import PRESETS, IdRange, SelectionPlan
from trainer_core.errors import KxlError


def filled(**kw) -> DatasetForm:
    return DatasetForm(db="/data/danbooru2023.db", images="/data/images", out="/data/out", **kw)


def test_defaults_are_the_card_preset_and_the_clis_build_options():
    opts = filled().to_engine()
    assert opts == BuildOptions(db=Path("/data/danbooru2023.db"), images=Path("/data/images"), out=Path("/data/out"),
                                plan=PRESETS["kohaku-xl-delta"], filters=PostFilters())  # fmt: skip
    assert opts.plan.preset == "kohaku-xl-delta" and opts.subfolder == "1_kxl"


def test_every_field_reaches_the_build_options():
    form = filled(seed=7, skip_deleted=False, skip_banned=False, images_only=False,
                  ratings=[True, True, False, False], min_score=10, min_fav=3, tags_any="1girl, solo",
                  tags_all=" long_hair ", tags_none="comic,", quality="hakubooru", repeats=3, name="mine",
                  image_format="webp", max_pixels=1024 * 1024, workers=2)  # fmt: skip
    form.ranges = [RangeRow("1,000", "2_000", "50"), RangeRow("5000", "", "all")]
    opts = form.to_engine()
    assert opts.plan == SelectionPlan((IdRange(1000, 2000, 50), IdRange(5000, None, None)), 7, None)
    assert opts.filters == PostFilters(
        skip_deleted=False, skip_banned=False, images_only=False, ratings=(0, 1), min_score=10,
        min_fav_count=3, tags_any=("1girl", "solo"), tags_all=("long_hair",), tags_none=("comic",),
    )  # fmt: skip
    assert (opts.quality, opts.repeats, opts.name, opts.image_format, opts.max_pixels) == (
        "hakubooru", 3, "mine", "webp", 1024 * 1024)  # fmt: skip
    assert opts.subfolder == "3_mine"


def test_round_trip_through_the_engine():
    form = filled(seed=3, ratings=[False, True, True, True], min_score=5, tags_none="comic", repeats=2,
                  image_format="png", max_pixels=1536 * 1536, workers=6)  # fmt: skip
    form.apply_preset("all")
    opts = form.to_engine()
    back = DatasetForm.from_engine(opts, workers=6)
    assert back.to_engine() == opts
    assert back == DatasetForm.from_engine(back.to_engine(), workers=6)
    assert back.workers == 6 and back.preset == "all"


def test_preset_is_derived_from_the_ranges_and_a_preset_sets_ranges_and_seed():
    form = filled(seed=9)
    assert form.preset == "kohaku-xl-delta"
    form.set_range_cell(0, 2, "5")
    assert form.preset == CUSTOM_PRESET and form.to_engine().plan.preset is None
    assert form.to_engine().plan.ranges[0] == IdRange(0, 3_000_000, 5)
    form.apply_preset("kohaku-xl-delta")
    assert form.preset == "kohaku-xl-delta" and form.seed == 1 and len(form.ranges) == 3
    form.seed = 42  # a new seed keeps the preset's name, as `kxl dataset build --preset X --seed 42`
    assert form.to_engine().plan == SelectionPlan(PRESETS["kohaku-xl-delta"].ranges, 42, "kohaku-xl-delta")
    with pytest.raises(KxlError, match="unknown selection preset 'nope'"):
        form.apply_preset("nope")


def test_add_and_remove_ranges():
    form = filled()
    form.ranges = [RangeRow("0", "100", "")]
    form.add_range()
    assert form.ranges[-1] == RangeRow("100", "", "")
    assert form.to_engine().plan.ranges == (IdRange(0, 100, None), IdRange(100, None, None))
    form.remove_range(0)
    assert form.parsed_ranges() == (IdRange(100, None, None),)
    form.remove_range(5)  # nothing there: nothing removed
    assert len(form.ranges) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: setattr(f, "db", " "), "choose the metadata DB"),
        (lambda f: setattr(f, "images", ""), "choose the images folder"),
        (lambda f: setattr(f, "out", ""), "choose the dataset folder"),
        (lambda f: f.set_range_cell(1, 0, "3M"), "range row 2: start, end and count must be whole numbers"),
        (lambda f: f.set_range_cell(0, 1, "4000000"), "overlap"),
        (lambda f: setattr(f, "ranges", []), "at least one id range"),
        (lambda f: setattr(f, "name", "a/b"), "dataset name 'a/b'"),
        (lambda f: setattr(f, "repeats", 0), "repeats must be at least 1"),
        (lambda f: setattr(f, "quality", "best"), "quality tags 'best'"),
        (lambda f: setattr(f, "max_pixels", 100), "pixel budget 100 is too small"),
        (lambda f: setattr(f, "workers", 0), "shards in parallel must be at least 1"),
    ],
)
def test_invalid_input_is_named(change, message):
    form = filled()
    change(form)
    with pytest.raises(KxlError, match=message):
        form.to_engine()


def test_off_filters_and_all_ratings_mean_no_filter():
    filters = filled(min_score=-1, min_fav=-1).post_filters()
    assert filters.min_score is None and filters.min_fav_count is None and filters.ratings is None
    assert filled(ratings=[False] * 4).post_filters().ratings == ()  # nothing ticked: nothing selected


def test_workspace_defaults_and_output_note_parts(tmp_path):
    form = DatasetForm()
    form.use_workspace(tmp_path / "d.db", None, tmp_path / "datasets")
    assert form.db == str(tmp_path / "d.db") and form.images == ""
    assert form.out_path() == tmp_path / "datasets" / "kohaku-xl-delta"
    form.name = " "
    assert form.subfolder() == "1_?"


def test_copy_is_independent():
    form = filled()
    snap = form.copy()
    form.set_range_cell(0, 0, "17")
    form.ratings[0] = False
    assert snap.ranges[0].start == "0" and snap.ratings[0] is True
