"""Tag search expressions for dataset filtering: AND / OR / NOT over caption tags.

Syntax (what the Tags tab's search box and `kxl tags stats --filter` accept):
    long hair, blue eyes          AND: a comma, `&`, the word AND, or just two tags side by side
    1girl | 1boy                  OR: `|` or the word OR (binds looser than AND)
    -solo   !solo   NOT solo      NOT (`-`/`!` at the start of a word: `mid-air` stays one tag)
    (1girl | 1boy) -monochrome    parentheses group
    "rice shower (umamusume)"     quotes make anything one tag; unquoted `name (series)` works too, because a
                                  `(` right after tag text belongs to the tag
    *hair   long*                 `*` is a wildcard inside one tag
Tags may be typed with spaces or underscores, in any case; `\\(` prompt escapes are undone. Operator words must be
upper case so that tags such as `not` or `or` stay searchable by quoting them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..errors import KxlError
from .text import normalize_tag_name, unescape_prompt_text


@dataclass(frozen=True)
class TagTerm:
    key: str  # normalised (lower case, underscores); may hold `*`
    text: str  # as typed, for messages

    @property
    def is_pattern(self) -> bool:
        return "*" in self.key


@dataclass(frozen=True)
class Not:
    item: Query


@dataclass(frozen=True)
class And:
    items: tuple[Query, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Query, ...]


Query = TagTerm | Not | And | Or

_OPERATOR_WORDS = {"AND": "AND", "OR": "OR", "NOT": "NOT"}


def parse_tag_query(text: str) -> Query | None:
    """Parse a search expression; None for an empty one (matches everything). Raises KxlError on bad syntax."""
    tokens = _tokenize(text)
    if not tokens:
        return None
    parser = _Parser(tokens, text)
    query = parser.parse_or()
    if parser.pos != len(tokens):
        kind, value = tokens[parser.pos]
        raise KxlError(f"search {text!r}: unexpected {value or kind!r}")
    return query


def query_terms(query: Query | None) -> list[TagTerm]:
    """Every tag term of a query, in the order typed."""
    if query is None:
        return []
    if isinstance(query, TagTerm):
        return [query]
    if isinstance(query, Not):
        return query_terms(query.item)
    out: list[TagTerm] = []
    for item in query.items:
        out.extend(query_terms(item))
    return out


def term_matches(term: TagTerm, keys: list[str] | tuple[str, ...]) -> list[str]:
    """The keys a term names: itself if present, or every key its `*` pattern matches."""
    if term.is_pattern:
        return fnmatch.filter(keys, term.key)
    return [term.key] if term.key in keys else []


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    buf: list[str] = []

    def flush() -> None:
        words = "".join(buf).split()
        buf.clear()
        tag_words: list[str] = []
        for word in words:
            op = _OPERATOR_WORDS.get(word)
            if op is None:
                tag_words.append(word)
                continue
            if tag_words:
                tokens.append(("TAG", " ".join(tag_words)))
                tag_words = []
            tokens.append((op, ""))
        if tag_words:
            tokens.append(("TAG", " ".join(tag_words)))

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        at_term_start = not "".join(buf).strip() or "".join(buf).split()[-1] in _OPERATOR_WORDS
        if c == '"':
            end = text.find('"', i + 1)
            if end == -1:
                raise KxlError(f'search {text!r}: a quote (") is not closed')
            flush()
            tokens.append(("TAG", text[i + 1 : end]))
            i = end + 1
            continue
        if c == "\\" and i + 1 < n:
            buf.append(text[i : i + 2])  # an escaped character is tag text, never an operator
            i += 2
            continue
        if c in ",&":
            flush()
            tokens.append(("AND", ""))
        elif c == "|":
            flush()
            tokens.append(("OR", ""))
        elif c == "(" and not at_term_start:
            # `name (series)`: read the balanced group as part of the tag.
            depth, j = 0, i
            while j < n:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            if depth:
                raise KxlError(f"search {text!r}: '(' is not closed")
            buf.append(text[i : j + 1])
            i = j + 1
            continue
        elif c == "(":
            flush()
            tokens.append(("(", ""))
        elif c == ")":
            flush()
            tokens.append((")", ""))
        elif (
            c in "-!" and (at_term_start or text[i - 1].isspace()) and i + 1 < n and not text[i + 1].isspace()
        ):
            flush()
            tokens.append(("NOT", ""))
        else:
            buf.append(c)
        i += 1
    flush()
    # Empty AND/OR between separators (`a,,b`, trailing comma while typing) carry no meaning: drop duplicates and
    # leading/trailing ones so a half-typed query still filters.
    cleaned: list[tuple[str, str]] = []
    for tok in tokens:
        if tok[0] in ("AND", "OR") and (not cleaned or cleaned[-1][0] in ("AND", "OR", "(", "NOT")):
            continue
        cleaned.append(tok)
    while cleaned and cleaned[-1][0] in ("AND", "OR"):
        cleaned.pop()
    return cleaned


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str):
        self.tokens = tokens
        self.text = text
        self.pos = 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def parse_or(self) -> Query:
        items = [self.parse_and()]
        while self._peek() == "OR":
            self.pos += 1
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Query:
        items = [self.parse_unary()]
        while self._peek() in ("AND", "NOT", "TAG", "("):
            if self._peek() == "AND":
                self.pos += 1
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(self) -> Query:
        kind = self._peek()
        if kind is None:
            raise KxlError(f"search {self.text!r}: a tag is missing at the end")
        if kind == "NOT":
            self.pos += 1
            if self._peek() is None:
                raise KxlError(f"search {self.text!r}: NOT needs a tag after it")
            return Not(self.parse_unary())
        if kind == "(":
            self.pos += 1
            inner = self.parse_or()
            if self._peek() != ")":
                raise KxlError(f"search {self.text!r}: '(' is not closed")
            self.pos += 1
            return inner
        if kind == "TAG":
            typed = self.tokens[self.pos][1]
            self.pos += 1
            key = normalize_tag_name(unescape_prompt_text(typed))
            if not key:
                raise KxlError(f"search {self.text!r}: empty tag")
            return TagTerm(key, typed.strip())
        raise KxlError(f"search {self.text!r}: unexpected {kind!r}")
