"""A1111 prompt editing / alternation schedules (trainer_core/generate/prompt_schedule.py).

The vectors are A1111's own answers (tests/core/data/a1111_prompt_schedules.json says how they were made):
first pass and hires pass, fractions and step counts, nesting, emphasis inside edits, and prompts that A1111
reads as literal text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_core.generate.prompt_schedule import active_entry, has_schedule, prompt_schedule

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "a1111_prompt_schedules.json").read_text(encoding="utf-8")
)["vectors"]


def test_vectors_cover_enough_prompts():
    assert len({v["prompt"] for v in VECTORS}) >= 50
    assert any(v["hires_steps"] for v in VECTORS)


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{i}-{v['steps']}-{v['hires_steps']}" for i, v in enumerate(VECTORS)]
)
def test_schedule_equals_a1111(vector):
    got = prompt_schedule(vector["prompt"], vector["steps"], vector["hires_steps"])
    assert [list(entry) for entry in got] == vector["schedule"]


def test_model_calls_count_from_zero_and_switch_after_the_end_step():
    # A1111 picks the first entry whose end step is >= the 0-based model-call index: "[a:b:3]" uses `a` for
    # calls 0..3 (four calls) and `b` from call 4 on.
    schedule = prompt_schedule("[a:b:3]", 10)
    assert [schedule[active_entry(schedule, i)][1] for i in range(10)] == ["a"] * 4 + ["b"] * 6
    alternating = prompt_schedule("[x|y]", 4)
    assert [alternating[active_entry(alternating, i)][1] for i in range(4)] == ["x", "x", "y", "x"]


def test_has_schedule():
    assert has_schedule("1girl, [cat|dog] ears") and has_schedule("[a:b:0.5]")
    assert not has_schedule("1girl, (smile:1.2), [simple background]")
    assert not has_schedule("a | [b:c:3]")  # a `|` outside an alternation: A1111 reads it all as text
