"""A1111 v1.10 attention parsing: every vector of specs/generation.md §1.1/§1.2, compared with == (exact floats)."""

from __future__ import annotations

import pytest

from trainer_core.errors import KxlError
from trainer_core.generate.prompt import (
    PromptSyntaxError,
    extra_network_multiplier,
    parse_prompt,
    parse_prompt_attention,
    strip_extra_networks,
)

# §1.1: A1111's own docstring examples.
DOCSTRING_VECTORS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

# §1.2: inputs written as Python literals (the spec shows them JSON-escaped).
EDGE_VECTORS = [
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("(a: 1.5 )", [("a", 1.5)]),
    ("(a:1.5", [("a:1.5", 1.1)]),
    ("a:1.5)", [("a:1.5)", 1.0)]),
    ("(a:1.5:)", [("a:1.5:", 1.1)]),
    ("(a:1.2:1.3)", [("a:1.2", 1.3)]),
    ("(a, b:1.5)", [("a, b", 1.5)]),
    ("(a:+1.5)", [("a", 1.5)]),
    ("(a:-.5)", [("a", -0.5)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:1.)", [("a", 1.0)]),
    ("(a:1e2)", [("a:1e2", 1.1)]),
    ("(a:abc)", [("a:abc", 1.1)]),
    ("(a:1.5)b)", [("a", 1.5), ("b)", 1.0)]),
    ("((a:1.2):1.5)", [("a", 1.7999999999999998)]),
    ("[a]", [("a", 0.9090909090909091)]),
    ("[[a]]", [("a", 0.8264462809917354)]),
    ("[a", [("a", 0.9090909090909091)]),
    ("[a:1.5]", [("a:1.5", 0.9090909090909091)]),
    ("[(a:1.2)]", [("a", 1.0909090909090908)]),
    ("x[(a)]", [("xa", 1.0)]),
    ("a]", [("a]", 1.0)]),
    ("a)", [("a)", 1.0)]),
    ("(a))", [("a", 1.1), (")", 1.0)]),
    ("((a))", [("a", 1.2100000000000002)]),
    ("(((a)))", [("a", 1.3310000000000004)]),
    ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    ("(a)[b]", [("a", 1.1), ("b", 0.9090909090909091)]),
    ("(a:1.2)(b:1.2)", [("ab", 1.2)]),
    ("a (b) (c)", [("a ", 1.0), ("b", 1.1), (" ", 1.0), ("c", 1.1)]),
    (
        "1girl, (masterpiece:1.2), best quality",
        [("1girl, ", 1.0), ("masterpiece", 1.2), (", best quality", 1.0)],
    ),
    (
        "score_9, (1girl:1.1), [blurry]",
        [("score_9, ", 1.0), ("1girl", 1.1), (", ", 1.0), ("blurry", 0.9090909090909091)],
    ),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("a\\b", [("ab", 1.0)]),
    ("a\\", [("a", 1.0)]),
    ("\\(a\\)", [("(a)", 1.0)]),
    ("\\(a:1.2\\)", [("(a:1.2)", 1.0)]),
    ("(a\\):1.2)", [("a)", 1.2)]),
    ("a\\(b:1.2)", [("a(b:1.2)", 1.0)]),
    ("a:b", [("a:b", 1.0)]),
    ("::", [("::", 1.0)]),
    ("(a\\(b)", [("a(b", 1.1)]),
]

BREAK_VECTORS = [
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a  BREAK  b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a, BREAK, b", [("a,", 1.0), ("BREAK", -1.0), (", b", 1.0)]),
    ("a BREAK", [("a", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("BREAK b", [("", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("a BREAKb", [("a BREAKb", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    # Quirk replicated on purpose: inside brackets the marker's weight becomes -1.1, so it is no longer a break.
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
]


@pytest.mark.parametrize(("text", "expected"), DOCSTRING_VECTORS + EDGE_VECTORS + BREAK_VECTORS)
def test_parse_matches_a1111(text: str, expected: list[tuple[str, float]]) -> None:
    result = parse_prompt_attention(text)
    assert result == expected
    # == on tuples of floats is already exact; check the types too so 1 (int) cannot pass for 1.0.
    assert all(type(weight) is float for _, weight in result)


def test_weights_are_exact_float_products() -> None:
    # Bit-exact products in A1111's order: innermost weight first, then each enclosing 1.1.
    assert parse_prompt_attention("(((a:1.3)))")[0][1] == 1.3 * 1.1 * 1.1
    assert parse_prompt_attention("[[[a]]]")[0][1] == 1.0 * (1 / 1.1) * (1 / 1.1) * (1 / 1.1)
    # Unclosed: all "(" are closed before all "[", whatever the textual order.
    assert parse_prompt_attention("[(a")[0][1] == 1.0 * 1.1 * (1 / 1.1)


def test_full_width_digits_are_a_weight_like_in_a1111() -> None:
    # Python's float() accepts any Unicode decimal digit, and A1111's regex uses \d.
    assert parse_prompt_attention("(a:\uff11.\uff15)") == [("a", 1.5)]


@pytest.mark.parametrize(("text", "bad", "position"), [("(a:1.2.3)", "1.2.3", 4), ("x (b: .)", ".", 7)])
def test_invalid_weight_names_number_and_position(text: str, bad: str, position: int) -> None:
    with pytest.raises(PromptSyntaxError) as info:
        parse_prompt_attention(text)
    err = info.value
    assert isinstance(err, KxlError)
    assert err.value == bad
    assert err.position == position - 1
    assert repr(bad) in str(err)
    assert f"character {position}" in str(err)


def test_invalid_weight_without_open_bracket_is_text() -> None:
    # A1111 only converts the number when a "(" is open; otherwise the whole match is plain text.
    assert parse_prompt_attention("a:1.2.3)") == [("a:1.2.3)", 1.0)]


def test_emphasis_none_skips_all_syntax() -> None:
    text = "(a:1.5) BREAK [b]"
    assert parse_prompt(text, "None") == [(text, 1.0)]
    assert parse_prompt(text, "Original") == parse_prompt_attention(text)
    assert parse_prompt(text, "No norm") == parse_prompt_attention(text)
    with pytest.raises(KxlError, match="unknown emphasis mode 'Loud'"):
        parse_prompt(text, "Loud")


def test_strip_extra_networks_returns_tags_and_keeps_surroundings() -> None:
    text, tags = strip_extra_networks("1girl, <lora:my_style:0.8>, solo <hypernet:hn:1:0.5><lora:plain>")
    assert text == "1girl, , solo "
    assert tags == [("lora", "my_style", "0.8"), ("hypernet", "hn", "1:0.5"), ("lora", "plain", "")]


def test_strip_extra_networks_leaves_non_tags_alone() -> None:
    for text in ("a <b> c", "<:x>", "<lora:>", "a < b: c", "(a:1.2)"):
        assert strip_extra_networks(text) == (text, [])
    # Names may contain anything but ">" (paths, dots, spaces).
    assert strip_extra_networks("<lora:dir/my lora.v2:0.5>x") == ("x", [("lora", "dir/my lora.v2", "0.5")])


def test_extra_network_multiplier() -> None:
    assert extra_network_multiplier("0.8") == 0.8
    assert extra_network_multiplier("") == 1.0
    assert extra_network_multiplier("te=0.5:0.7") == 0.7
    with pytest.raises(PromptSyntaxError, match="<lora:x:abc>: strength 'abc' is not a number"):
        extra_network_multiplier("abc", tag="lora:x:abc")
