"""The Merge form's state without Qt: the recipe it gives the engine, presets, linked weights, round trips, bad input."""

from __future__ import annotations

import pytest

from kxl_gui.state.merge_form import (
    BLOCK_SHAPES,
    PRESET_CUSTOM,
    PRESET_KXL,
    PRESET_OUTPUT_NAME,
    MergeForm,
    MergeInput,
)
from trainer_core.errors import KxlError
from trainer_core.merge.blocks import BLOCKS
from trainer_core.merge.recipe import MergeRecipe, kohaku_xl_delta_recipe
from trainer_core.models.sdxl_layout import EMBEDDING_KEYS

G, B, ORIG, L = "/m/gamma.safetensors", "/m/beta.safetensors", "/m/sdxl.safetensors", "/m/style.safetensors"


def card_form() -> MergeForm:
    form = MergeForm()
    form.apply_preset(PRESET_KXL, G, B, ORIG)
    return form


def test_the_preset_is_exactly_the_clis_recipe():
    form = card_form()
    assert form.preset == PRESET_KXL
    assert form.to_engine() == kohaku_xl_delta_recipe(G, B, ORIG)
    assert form.default_output_stem() == PRESET_OUTPUT_NAME


def test_a_preset_is_from_engine_of_its_recipe_and_round_trips():
    form = MergeForm.from_engine(kohaku_xl_delta_recipe(G, B, ORIG))
    assert form.preset == PRESET_KXL and form.link_weights and form.out_auto
    assert [m.path for m in form.models] == [G, B] and form.original == ORIG
    recipe = MergeRecipe("add_difference", [G, B, ORIG], [0.7], block_weights={b: [0.25] for b in BLOCKS},
                         lokr=[(L, 0.8)], dtype="bf16", missing="take_a")  # fmt: skip
    back = MergeForm.from_engine(recipe, out="/m/out.safetensors")
    assert back.to_engine() == recipe and back.preset == PRESET_CUSTOM
    assert back.multiplier == 0.7 and back.blocks_on and back.lokr_on and not back.out_auto
    weighted = MergeRecipe("weighted_sum", [G, B], [0.3, 0.7], block_weights={b: [0.9, 0.1] for b in BLOCKS})
    assert MergeForm.from_engine(weighted).to_engine() == weighted


def test_applying_the_preset_keeps_chosen_models_lokr_and_output():
    form = MergeForm(models=[MergeInput("/m/mine.safetensors", 0.2), MergeInput("", 0.8)], revert=[])
    form.set_lokr_path(L)
    form.set_output("/m/out.safetensors")
    form.dtype = "fp32"
    form.apply_preset(PRESET_KXL, G, B, ORIG)
    expected = kohaku_xl_delta_recipe("/m/mine.safetensors", B, ORIG)  # model A kept, the empty B filled in
    expected.lokr = [(L, 1.0)]
    assert form.to_engine() == expected
    assert form.out == "/m/out.safetensors" and not form.out_auto
    form.apply_preset(PRESET_CUSTOM)  # "custom" is a state, not something to apply: nothing changes
    assert form.preset == PRESET_KXL


def test_the_preset_without_a_workspace_leaves_the_models_to_choose():
    form = MergeForm()
    form.apply_preset(PRESET_KXL)
    assert form.preset == PRESET_KXL and [m.path for m in form.models] == ["", ""] and form.original == ""
    with pytest.raises(KxlError, match="choose model A"):
        form.to_engine()


def test_linked_weights_keep_a_equal_one_minus_b():
    form = card_form()
    form.set_weight(1, 0.3)
    assert [m.weight for m in form.models] == [0.7, 0.3] and form.preset == PRESET_CUSTOM
    form.set_link(False)
    form.set_weight(0, 0.5)
    assert [m.weight for m in form.models] == [0.5, 0.3]
    form.set_link(True)
    assert [m.weight for m in form.models] == [0.7, 0.3]
    assert form.formula() == "0.7·A + 0.3·B"


def test_operation_sets_the_model_count_and_what_applies():
    form = card_form()
    form.set_operation("add_difference")
    assert len(form.models) == 3 and form.blocks_apply and not form.link_applies
    assert form.formula() == "A + 1·(B − C)"
    form.set_operation("copy")
    assert len(form.models) == 1 and not form.blocks_apply
    form.set_operation("weighted_sum")
    assert [m.path for m in form.models] == [G, ""]
    for _ in range(4):
        form.add_model()
    assert len(form.models) == 6 and not form.can_add_model
    with pytest.raises(KxlError, match="at most 6 models"):
        form.add_model()
    form.remove_model(2)
    assert len(form.models) == 5 and not form.blocks_apply  # per-block weights: two models only
    with pytest.raises(KxlError, match="unknown merge operation 'average'"):
        form.set_operation("average")


def test_block_weights_start_flat_and_shapes_scale_the_global_weight():
    form = card_form()
    form.set_weight(1, 0.8)
    form.set_blocks_on(True)
    assert set(form.block_weights.values()) == {0.8} and form.preset == PRESET_CUSTOM
    form.apply_block_shape("IN blocks only")
    blocks = form.to_engine().block_weights
    assert list(blocks) == list(BLOCKS)
    assert blocks["IN04"] == [0.2, 0.8] and blocks["OUT08"] == [1.0, 0.0] and blocks["BASE"] == [1.0, 0.0]
    form.apply_block_shape("Ramp up (BASE → OUT08)")
    assert form.block_weights["BASE"] == 0.0 and form.block_weights["OUT08"] == 0.8
    assert set(BLOCK_SHAPES) >= {"Flat (global weight)", "IN blocks only"}
    with pytest.raises(KxlError, match="unknown block shape 'Zigzag'"):
        form.apply_block_shape("Zigzag")


def test_reverts_keep_the_engines_order_and_need_the_original():
    form = card_form()
    form.set_revert("te1_token", False)
    form.set_revert("te1_token", True)
    assert form.revert == list(EMBEDDING_KEYS) and form.preset == PRESET_KXL
    form.set_revert("te2_position", False)
    assert form.to_engine().revert == ["te1_token", "te1_position", "te2_token"]
    form.original = ""
    with pytest.raises(KxlError, match="choose the original model"):
        form.to_engine()
    with pytest.raises(KxlError, match="unknown embedding 'te3_token'"):
        form.set_revert("te3_token", True)


def test_default_output_name_follows_the_inputs():
    form = card_form()
    form.set_weight(1, 0.25)
    assert form.default_output_stem() == "merge-gamma-beta"
    form.set_operation("copy")
    form.set_lokr_path(L)
    assert form.lokr_on and form.default_output_stem() == "gamma+style"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: setattr(f.models[1], "path", " "), "choose model B"),
        (lambda f: (setattr(f, "lokr_on", True), setattr(f, "lokr_path", "")), "choose the LoKr file"),
        (lambda f: setattr(f, "dtype", "int8"), "unknown output dtype 'int8'"),
        (lambda f: setattr(f, "missing", "skip"), "unknown missing-key policy 'skip'"),
        (lambda f: (f.set_operation("copy"), setattr(f, "revert", [])), "nothing to do"),
    ],
)
def test_invalid_input_is_named(change, message):
    form = card_form()
    change(form)
    with pytest.raises(KxlError, match=message):
        form.to_engine()


def test_recipes_the_form_cannot_show_are_refused_by_name():
    with pytest.raises(KxlError, match="bakes one LoKr; this recipe has 2"):
        MergeForm.from_engine(MergeRecipe("copy", [G], lokr=[(L, 1.0), (L, 0.5)]))
    three = MergeRecipe("weighted_sum", [G, B, ORIG], [0.2, 0.3, 0.5], block_weights={"MID": [0.2, 0.3, 0.5]})
    with pytest.raises(KxlError, match="weighted sum of two models only"):
        MergeForm.from_engine(three)
    with pytest.raises(KxlError, match="needs exactly 3 input models"):
        MergeForm.from_engine(MergeRecipe("add_difference", [G, B], [1.0]))


def test_copy_is_independent():
    form = card_form()
    snap = form.copy()
    form.set_weight(1, 0.1)
    form.block_weights["MID"] = 0.9
    form.set_revert("te1_token", False)
    assert snap.models[1].weight == 0.5 and snap.block_weights["MID"] == 0.5 and "te1_token" in snap.revert
