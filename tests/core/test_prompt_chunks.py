"""75-token chunking (A1111 tokenize_line): specs/generation.md §2 and the §2.1 vectors.

Two tokenizers: a 514-token character-level CLIP vocab built in tmp (BOS 512, EOS 513, also a permuted copy so no
id can be hard-coded), and the real shipped SDXL vocab, for which the spec's vectors were verified.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from trainer_core.errors import KxlError
from trainer_core.generate.prompt import (
    PromptChunks,
    prompt_token_counter,
    token_counter_text,
    tokenize_prompt,
)
from trainer_core.models.clip_vocab import bytes_to_unicode
from trainer_core.models.tokenizers import load_sdxl_tokenizers


def _char_tokenizer(folder: Path, *, reverse: bool) -> CLIPTokenizer:
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    if reverse:
        tokens.reverse()  # every id changes: BOS 1, EOS 0, ",</w>" 246
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=77)


@pytest.fixture(scope="module", params=[False, True], ids=["char", "char-reversed"])
def char_tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    return _char_tokenizer(tmp_path_factory.mktemp("tok") / "t", reverse=request.param)


@pytest.fixture(scope="module")
def sdxl_toks() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    return load_sdxl_tokenizers()


def content_lengths(result: PromptChunks) -> list[int]:
    """Real tokens per chunk: everything between BOS and the first EOS."""
    return [chunk[1:].index(result.eos_id) for chunk in result.chunks]


def check_shape(result: PromptChunks) -> None:
    assert len(result.chunks) == len(result.multipliers)
    for chunk, mults in zip(result.chunks, result.multipliers, strict=True):
        assert len(chunk) == 77 and len(mults) == 77
        assert chunk[0] == result.bos_id and chunk[76] == result.eos_id
        n = chunk[1:].index(result.eos_id)
        assert chunk[1 + n :] == [result.eos_id] * (76 - n)  # EOS padding
        assert mults[0] == 1.0 and mults[1 + n :] == [1.0] * (76 - n)


def words(word: str, n: int) -> str:
    return " ".join([word] * n)


# ---------------------------------------------------------------------------------- character-level vocab


def test_char_tokenizer_ids_come_from_the_tokenizer(char_tok: CLIPTokenizer) -> None:
    result = tokenize_prompt("", char_tok)
    bos, eos = char_tok.bos_token_id, char_tok.eos_token_id
    assert (bos, eos) in {(512, 513), (1, 0)}
    assert result.chunks == [[bos] + [eos] * 76]
    assert result.multipliers == [[1.0] * 77]
    assert result.token_count == 0


# (prompt, comma_backtrack, chunk count, token_count, content lengths); single letters are one token each.
CHAR_VECTORS = [
    ("c", 20, 1, 1, [1]),
    (words("c", 75), 20, 1, 75, [75]),
    (words("c", 76), 20, 2, 76, [75, 1]),
    (words("c", 150), 20, 2, 150, [75, 75]),
    ("c BREAK d", 20, 2, 76, [1, 1]),
    ("BREAK d", 20, 2, 76, [0, 1]),
    ("c BREAK", 20, 1, 75, [1]),
    ("c BREAK BREAK d", 20, 3, 151, [1, 0, 1]),
    ("(c BREAK d)", 20, 1, 7, [7]),  # "break" is text here: b r e a k</w> = 5 tokens
    (words("c", 70) + ", " + words("d", 10), 20, 2, 85, [71, 10]),
    (words("c", 70) + ", " + words("d", 10), 0, 2, 81, [75, 6]),
    (words("c", 50) + ", " + words("d", 30), 20, 2, 81, [75, 6]),
    (words("c", 54) + ", " + words("d", 30), 20, 2, 85, [75, 10]),
    (words("c", 55) + ", " + words("d", 30), 20, 2, 105, [56, 30]),
    (words("c", 55) + ", " + words("d", 30), 19, 2, 86, [75, 11]),
    (words("c", 74) + ", d", 20, 2, 76, [75, 1]),
    (words("c", 75) + ", d", 20, 2, 77, [75, 2]),
]


@pytest.mark.parametrize(("text", "backtrack", "n_chunks", "count", "lengths"), CHAR_VECTORS)
def test_chunking_char_vocab(
    char_tok: CLIPTokenizer, text: str, backtrack: int, n_chunks: int, count: int, lengths: list[int]
) -> None:
    result = tokenize_prompt(text, char_tok, comma_backtrack=backtrack)
    check_shape(result)
    assert len(result.chunks) == n_chunks
    assert result.token_count == count
    assert content_lengths(result) == lengths


def test_backtrack_moves_words_with_their_weights(char_tok: CLIPTokenizer) -> None:
    comma = char_tok.convert_tokens_to_ids(",</w>")
    d = char_tok.convert_tokens_to_ids("d</w>")
    result = tokenize_prompt(words("c", 55) + ", " + words("(d:1.3)", 30), char_tok)
    first, second = result.chunks
    assert first[56] == comma and first[57:] == [result.eos_id] * 20
    assert second[1:31] == [d] * 30
    assert result.multipliers[0][56:] == [1.0] * 21
    assert result.multipliers[1][1:31] == [1.3] * 30


def test_comma_arriving_on_a_full_chunk_opens_the_next(char_tok: CLIPTokenizer) -> None:
    comma = char_tok.convert_tokens_to_ids(",</w>")
    result = tokenize_prompt(words("c", 75) + ", d", char_tok)
    assert result.chunks[1][1:3] == [comma, char_tok.convert_tokens_to_ids("d</w>")]


def test_fragments_are_tokenized_separately(char_tok: CLIPTokenizer) -> None:
    ids = char_tok.convert_tokens_to_ids
    # "a" and "b" are separate fragments, so each ends a word: a</w> b</w>, weights 1.0 / 1.2.
    split = tokenize_prompt("a(b:1.2)", char_tok)
    assert split.chunks[0][1:4] == [ids("a</w>"), ids("b</w>"), split.eos_id]
    assert split.multipliers[0][1:3] == [1.0, 1.2]
    # Equal weights merge before tokenizing, so "ab" is one word: a b</w>.
    merged = tokenize_prompt("(a:1.2)(b:1.2)", char_tok)
    assert merged.chunks[0][1:4] == [ids("a"), ids("b</w>"), merged.eos_id]
    assert merged.multipliers[0][1:3] == [1.2, 1.2]


def test_emphasis_modes(char_tok: CLIPTokenizer) -> None:
    text = "(a:1.5) [b] BREAK c"
    original = tokenize_prompt(text, char_tok, emphasis="Original")
    assert original.multipliers[0][1:3] == [1.5, 0.9090909090909091]
    assert tokenize_prompt(text, char_tok, emphasis="No norm") == original
    ignore = tokenize_prompt(text, char_tok, emphasis="Ignore")
    assert ignore.chunks == original.chunks  # same tokens and BREAK, weights dropped
    assert all(m == [1.0] * 77 for m in ignore.multipliers)
    none = tokenize_prompt(text, char_tok, emphasis="None")
    assert len(none.chunks) == 1  # BREAK is plain text, brackets are tokens
    assert none.chunks[0][1] == char_tok.convert_tokens_to_ids("(</w>")
    assert all(m == [1.0] * 77 for m in none.multipliers)


def test_bad_settings_are_reported(char_tok: CLIPTokenizer) -> None:
    with pytest.raises(KxlError, match="between 0 and 74, got 75"):
        tokenize_prompt("a", char_tok, comma_backtrack=75)
    with pytest.raises(KxlError, match="unknown emphasis mode"):
        tokenize_prompt("a", char_tok, emphasis="original")


def test_padded_to_appends_empty_chunks(char_tok: CLIPTokenizer) -> None:
    result = tokenize_prompt("c BREAK d", char_tok)
    padded = result.padded_to(4)
    assert padded.chunks[:2] == result.chunks
    assert padded.chunks[2:] == [[result.bos_id] + [result.eos_id] * 76] * 2
    # An empty pad chunk equals the chunk an empty prompt or a lone BREAK produces.
    assert padded.chunks[2] == tokenize_prompt("", char_tok).chunks[0]
    assert padded.multipliers[2:] == [[1.0] * 77] * 2
    assert padded.token_count == result.token_count
    assert len(result.chunks) == 2  # the original is untouched
    assert result.padded_to(1).chunks == result.chunks


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0/75"), (1, "1/75"), (75, "75/75"), (76, "76/150"), (151, "151/225")]
)
def test_counter_text(count: int, text: str) -> None:
    assert token_counter_text(count) == text


def test_prompt_token_counter_ignores_extra_network_tags(char_tok: CLIPTokenizer) -> None:
    assert prompt_token_counter("a, <lora:style_x:0.8> b", char_tok) == "3/75"


# ------------------------------------------------------------------------------------ real SDXL vocab


def cats(n: int) -> str:
    return words("cat", n)


# §2.1 vectors [verified against A1111 with the real CLIP vocab].
SDXL_VECTORS = [
    ("", 20, 1, 0, [0]),
    ("cat", 20, 1, 1, [1]),
    (cats(75), 20, 1, 75, [75]),
    (cats(76), 20, 2, 76, [75, 1]),
    (cats(150), 20, 2, 150, [75, 75]),
    ("cat BREAK dog", 20, 2, 76, [1, 1]),
    ("BREAK dog", 20, 2, 76, [0, 1]),
    ("cat BREAK", 20, 1, 75, [1]),
    ("cat BREAK BREAK dog", 20, 3, 151, [1, 0, 1]),
    ("(cat BREAK dog)", 20, 1, 3, [3]),
    (cats(70) + ", " + words("dog", 10), 20, 2, 85, [71, 10]),
    (cats(70) + ", " + words("dog", 10), 0, 2, 81, [75, 6]),
    (cats(50) + ", " + words("dog", 30), 20, 2, 81, [75, 6]),
    (cats(54) + ", " + words("dog", 30), 20, 2, 85, [75, 10]),
    (cats(55) + ", " + words("dog", 30), 20, 2, 105, [56, 30]),
    (cats(74) + "," + " dog", 20, 2, 76, [75, 1]),
    (cats(75) + "," + " dog", 20, 2, 77, [75, 2]),
]


@pytest.mark.parametrize(("text", "backtrack", "n_chunks", "count", "lengths"), SDXL_VECTORS)
def test_chunking_sdxl_vocab(
    sdxl_toks: tuple[CLIPTokenizer, CLIPTokenizer],
    text: str,
    backtrack: int,
    n_chunks: int,
    count: int,
    lengths: list[int],
) -> None:
    tok1, tok2 = sdxl_toks
    result = tokenize_prompt(text, tok1, comma_backtrack=backtrack)
    check_shape(result)
    assert (len(result.chunks), result.token_count, content_lengths(result)) == (n_chunks, count, lengths)
    # Both SDXL encoders get the same chunk ids (TE2's pad-0 rewrite happens in the encoder, not here).
    assert tokenize_prompt(text, tok2, comma_backtrack=backtrack) == result


def test_sdxl_weighted_prompt_exact_ids(sdxl_toks: tuple[CLIPTokenizer, CLIPTokenizer]) -> None:
    result = tokenize_prompt("(cat:1.5) dog [cow]", sdxl_toks[0])
    assert result.chunks == [[49406, 2368, 1929, 9706] + [49407] * 73]
    assert result.multipliers == [[1.0, 1.5, 1.0, 0.9090909090909091] + [1.0] * 73]
    assert result.counter_text() == "3/75"


def test_sdxl_break_inside_brackets_is_weighted_text(sdxl_toks: tuple[CLIPTokenizer, CLIPTokenizer]) -> None:
    result = tokenize_prompt("(cat BREAK dog)", sdxl_toks[0])
    assert result.chunks[0][:5] == [49406, 2368, 2568, 1929, 49407]  # cat, break</w>, dog
    assert result.multipliers[0][1:4] == [1.1, -1.1, 1.1]


def test_sdxl_tokenizer_with_specials(sdxl_toks: tuple[CLIPTokenizer, CLIPTokenizer]) -> None:
    assert sdxl_toks[0]("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
