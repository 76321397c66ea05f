"""A1111 PNG infotext: writing, reading and PNG storage (specs/generation.md §6 vectors)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trainer_core.errors import KxlError
from trainer_core.generate.infotext import (
    DEFAULTS,
    create_infotext,
    parse_infotext,
    read_png_parameters,
    write_png_parameters,
)

SPEC_PROMPT = "1girl, solo, (masterpiece:1.2),\nlooking at viewer"
SPEC_NEGATIVE = "lowres, bad anatomy"
SPEC_PARAMS = {
    "Steps": 28,
    "Sampler": "Euler a",
    "Schedule type": "Automatic",
    "CFG scale": 7.0,
    "Seed": 1234567890,
    "Size": "832x1216",
    "Model hash": "1a2b3c4d5e",
    "Model": "animagine-xl-3.1",
    "Denoising strength": 0.35,
    "Hires upscale": 1.5,
    "Hires steps": 15,
    "Hires upscaler": "Latent",
    "Lora hashes": "mylokr: 0123456789ab",
    "Emphasis": "No norm",
    "Version": "v1.10.1",
}
SPEC_TEXT = (
    "1girl, solo, (masterpiece:1.2),\n"
    "looking at viewer\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1234567890, Size: 832x1216, "
    "Model hash: 1a2b3c4d5e, Model: animagine-xl-3.1, Denoising strength: 0.35, Hires upscale: 1.5, "
    'Hires steps: 15, Hires upscaler: Latent, Lora hashes: "mylokr: 0123456789ab", Emphasis: No norm, '
    "Version: v1.10.1"
)
SPEC_PARSED = {
    "Prompt": SPEC_PROMPT,
    "Negative prompt": SPEC_NEGATIVE,
    "Steps": "28",
    "Sampler": "Euler a",
    "Schedule type": "Automatic",
    "CFG scale": "7",
    "Seed": "1234567890",
    "Size-1": "832",
    "Size-2": "1216",
    "Model hash": "1a2b3c4d5e",
    "Model": "animagine-xl-3.1",
    "Denoising strength": "0.35",
    "Hires upscale": "1.5",
    "Hires steps": "15",
    "Hires upscaler": "Latent",
    "Lora hashes": "mylokr: 0123456789ab",
    "Emphasis": "No norm",
    "Version": "v1.10.1",
}


def test_create_matches_spec_vector() -> None:
    assert create_infotext(SPEC_PROMPT, SPEC_NEGATIVE, SPEC_PARAMS) == SPEC_TEXT


def test_create_orders_keys_like_a1111_whatever_the_input_order() -> None:
    items = list(SPEC_PARAMS.items())
    random.Random(3).shuffle(items)
    # Known keys go to A1111's slots; the extras keep their relative order, so restore that part only.
    extras = ["Hires upscale", "Hires steps", "Hires upscaler", "Lora hashes", "Emphasis"]
    shuffled = dict(items)
    for key in extras:
        shuffled[key] = shuffled.pop(key)
    assert list(shuffled) != list(SPEC_PARAMS)
    assert create_infotext(SPEC_PROMPT, SPEC_NEGATIVE, shuffled) == SPEC_TEXT


def test_parse_matches_spec_vector() -> None:
    assert parse_infotext(SPEC_TEXT, defaults=False) == SPEC_PARSED


def test_parse_fills_a1111_defaults() -> None:
    parsed = parse_infotext(SPEC_TEXT)
    assert parsed == {**DEFAULTS, **SPEC_PARSED}
    assert parsed["Clip skip"] == "1" and parsed["RNG"] == "GPU" and parsed["Emphasis"] == "No norm"
    assert parsed["Hires resize-1"] == "0" and parsed["Hires sampler"] == "Use same sampler"


def test_json_quoting_round_trip() -> None:
    text = create_infotext("p", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1, "Note": 'say "hi", ok'})
    assert text == 'p\nSteps: 20, Sampler: Euler, Seed: 1, Note: "say \\"hi\\", ok"'
    assert parse_infotext(text)["Note"] == 'say "hi", ok'


def test_number_formatting() -> None:
    text = create_infotext(
        "p", "", {"Steps": 20, "CFG scale": 5.5, "Seed": 7, "Hires upscale": 2.0, "Denoising strength": 0.35}
    )
    assert text.endswith("Steps: 20, CFG scale: 5.5, Seed: 7, Denoising strength: 0.35, Hires upscale: 2")
    assert (
        create_infotext("p", "", {"Steps": 1, "Seed": 2, "Size": (832, 1216)})
        == "p\nSteps: 1, Seed: 2, Size: 832x1216"
    )


def test_prompt_only() -> None:
    assert parse_infotext("just a prompt", defaults=False) == {
        "Prompt": "just a prompt",
        "Negative prompt": "",
    }


def test_two_params_are_still_prompt() -> None:
    parsed = parse_infotext("a prompt\nSteps: 20, Sampler: Euler", defaults=False)
    assert parsed == {"Prompt": "a prompt\nSteps: 20, Sampler: Euler", "Negative prompt": ""}


def test_multiline_negative() -> None:
    text = "a prompt\nNegative prompt: bad\nmore bad\nSteps: 20, Sampler: Euler, CFG scale: 7"
    assert parse_infotext(text, defaults=False) == {
        "Prompt": "a prompt",
        "Negative prompt": "bad\nmore bad",
        "Steps": "20",
        "Sampler": "Euler",
        "CFG scale": "7",
    }
    assert (
        create_infotext("a prompt", "bad\nmore bad", {"Steps": 20, "Sampler": "Euler", "CFG scale": 7})
        == text
    )


def test_a1111_omission_rules() -> None:
    base = {"Steps": 20, "Sampler": "Euler", "Seed": 3}
    plain = create_infotext("a", "", {**base, "Clip skip": 1, "RNG": "GPU", "Emphasis": "No norm"})
    assert plain == "a\nSteps: 20, Sampler: Euler, Seed: 3"  # no "(" or "[" -> Emphasis irrelevant
    text = create_infotext("(a:1.2)", "", {**base, "Clip skip": 2, "RNG": "CPU", "Emphasis": "No norm"})
    assert text == "(a:1.2)\nSteps: 20, Sampler: Euler, Seed: 3, Clip skip: 2, RNG: CPU, Emphasis: No norm"
    assert "Emphasis" not in create_infotext("(a)", "", {**base, "Emphasis": "Original"})
    assert "Emphasis: Ignore" in create_infotext("a", "[b]", {**base, "Emphasis": "Ignore"})
    # None values are skipped; a value equal to its key is written bare.
    assert create_infotext("a", "", {**base, "VAE": None, "Tiling": "Tiling"}) == (
        "a\nSteps: 20, Sampler: Euler, Seed: 3, Tiling"
    )


def test_hires_resize_and_legacy_sampler() -> None:
    text = "p\nSteps: 20, Sampler: DPM++ 2M Karras, Seed: 1, Hires resize: 1024x1536, Hires sampler: DPM++ 2M SGM Uniform"
    parsed = parse_infotext(text)
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    assert parsed["Hires sampler"] == "DPM++ 2M" and parsed["Hires schedule type"] == "SGM Uniform"
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("1024", "1536")
    assert "Hires resize" not in parsed
    assert parse_infotext("p\nSteps: 1, Sampler: Euler a, Seed: 2")["Sampler"] == "Euler a"


def test_bad_key_is_rejected() -> None:
    with pytest.raises(KxlError, match="infotext key 'Bad, key'"):
        create_infotext("a", "", {"Bad, key": 1})


_line = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
    max_size=30,
).map(str.strip)
# The whole infotext is stripped, so only prompts without outer blank lines can come back unchanged.
_prompt = st.lists(_line, min_size=1, max_size=3).map("\n".join).filter(lambda p: p == p.strip())
_value = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs",), blacklist_characters="\x85\u2028\u2029\x1c\x1d\x1e"
        ),
        max_size=20,
    ),
)


def _expected(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@settings(max_examples=100, deadline=None)
@given(
    prompt=_prompt.filter(lambda p: p and not any(ln.startswith("Negative prompt:") for ln in p.split("\n"))),
    negative=_prompt,
    extra=st.dictionaries(
        st.sampled_from(["Note", "Hires prompt", "Lora hashes", "Seed", "Custom-key/x"]), _value
    ),
)
def test_round_trip_is_exact(prompt: str, negative: str, extra: dict[str, object]) -> None:
    # Prompt lines without outer whitespace (the reader strips each line, as A1111 does) and values that are not
    # "WxH" sizes (those are split on purpose) must come back exactly.
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, **extra}
    params = {k: v for k, v in params.items() if not (isinstance(v, str) and _is_size(v))}
    parsed = parse_infotext(create_infotext(prompt, negative, params), defaults=False)
    assert parsed.pop("Prompt") == prompt
    assert parsed.pop("Negative prompt") == negative
    assert parsed == {k: _expected(v) for k, v in params.items()}


def _is_size(value: str) -> bool:
    left, sep, right = value.partition("x")
    return bool(sep) and left.isdigit() and right.isdigit() and left.isascii() and right.isascii()


def test_png_round_trip_with_non_latin1_text(tmp_path) -> None:
    text = create_infotext("1girl, 初音ミク, ☆", "低品質", {"Steps": 20, "Sampler": "Euler a", "Seed": 5})
    path = tmp_path / "out" / "00001.png"
    write_png_parameters(Image.new("RGB", (8, 8), (10, 20, 30)), path, text)
    assert read_png_parameters(path) == text
    assert [p.name for p in path.parent.iterdir()] == ["00001.png"]  # no temp file left behind
    with Image.open(path) as image:
        assert image.size == (8, 8) and image.getpixel((0, 0)) == (10, 20, 30)
    assert b"iTXt" in path.read_bytes()  # UTF-8 text chunk; tEXt is Latin-1 only


def test_png_latin1_uses_plain_text_chunk(tmp_path) -> None:
    path = tmp_path / "a.png"
    write_png_parameters(Image.new("L", (4, 4)), path, "café\nSteps: 1, Sampler: Euler, Seed: 2")
    assert read_png_parameters(path) == "café\nSteps: 1, Sampler: Euler, Seed: 2"
    assert b"tEXtparameters" in path.read_bytes()


def test_read_png_without_parameters_and_bad_files(tmp_path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert read_png_parameters(plain) is None
    with pytest.raises(KxlError, match="image file not found") as info:
        read_png_parameters(tmp_path / "missing.png")
    assert info.value.path == tmp_path / "missing.png"
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(KxlError, match="not a readable image"):
        read_png_parameters(junk)
