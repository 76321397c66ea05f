"""A1111 prompt editing and alternation: which prompt text is active at which sampling step.

Syntax (stable-diffusion-webui v1.10, "prompt editing"):
  [from:to:when]   `from` until step `when`, then `to`
  [to:when]        nothing, then `to`
  [from::when]     `from`, then nothing
  [a|b|c]          a, b, c, a, ... one per step (empty alternatives allowed)
Nesting is allowed anywhere; `(...)`, `(...:w)` and `[...]` emphasis stay in the text for the attention parser.

`when` is a number as A1111's grammar reads it (sign, decimals, exponent). With a "." it is a fraction of the
pass's steps, else a step count; for the hires pass the numbers are offset (A1111's "new" scheduling): `1.5` is
half way through the hires pass, `25` is step 5 of it after 20 base steps. The result is truncated toward zero and
capped at the step count; values under 1 never switch.

How A1111 decides what parses: the whole prompt must be readable as editing constructs, emphasis and plain text,
where only at the outermost level a stray `[ ] ( ) :` is literal text. Anything else (a `|` outside an
alternation, a backslash at the very end, a newline after a backslash) makes the whole prompt literal, with no
editing at all; a bracket that does not close as a construct is just a character. We follow those rules with a
recursive-descent parser (A1111 uses an Earley parser), checked against A1111's own output on the test vectors.

What "step" means while sampling: A1111 counts model calls from 0 in each pass and uses the first schedule entry
whose end step is >= that count, over a step count doubled for samplers that call the model twice per step
(Heun, DPM2, DPM++ 2S a, DPM++ SDE). `active_entry` does that lookup.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import KxlError

# lark's common.SIGNED_NUMBER: ASCII digits only, optional sign, decimals with an optional exponent.
_NUMBER_RE = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)
_WHITESPACE_RE = re.compile(r"\s+")
# Plain text: anything but the syntax characters, or a backslash followed by any character except a newline
# (the backslash stays in the text; the attention parser turns `\(` into `(` later).
_PLAIN_RE = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_STRAY = frozenset("[]():")


@dataclass
class _Scheduled:
    before: list | None
    after: list
    number: str
    when: int = 0  # set by _collect_steps, as A1111 rewrites the parse tree in place


@dataclass
class _Alternate:
    options: list[list] = field(default_factory=list)


class _NoParse(Exception):
    pass


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def top(self) -> list:
        nodes: list = []
        pos = 0
        n = len(self.text)
        while pos < n:
            items, pos = self.prompt(pos)
            nodes.extend(items)
            if pos < n:
                if self.text[pos] not in _STRAY:
                    raise _NoParse  # `|` outside an alternation, or an unusable backslash
                nodes.append(self.text[pos])
                pos += 1
        return nodes

    def prompt(self, pos: int) -> tuple[list, int]:
        """A run of plain text, emphasis and editing constructs; stops where none of them fits."""
        items: list = []
        text = self.text
        while pos < len(text):
            ch = text[pos]
            if ch in "([":
                got = self.round(pos) if ch == "(" else self.square(pos)
                if got is None:
                    break
                items.extend(got[0])
                pos = got[1]
                continue
            match = _PLAIN_RE.match(text, pos)
            if match is None:
                break
            items.append(match.group())
            pos = match.end()
        return items, pos

    def round(self, pos: int) -> tuple[list, int] | None:
        """`(p)` or `(p:p)`: emphasis, kept verbatim around its inner constructs."""
        first, pos = self.prompt(pos + 1)
        if self._at(pos, ")"):
            return ["(", *first, ")"], pos + 1
        if self._at(pos, ":"):
            second, end = self.prompt(pos + 1)
            if self._at(end, ")"):
                return ["(", *first, ":", *second, ")"], end + 1
        return None

    def square(self, pos: int) -> tuple[list, int] | None:
        """`[p]` (emphasis), `[p|p...]` (alternation), `[p:N]` or `[p:p:N]` (editing)."""
        first, pos = self.prompt(pos + 1)
        if self._at(pos, "]"):
            return ["[", *first, "]"], pos + 1
        if self._at(pos, "|"):
            options = [first]
            while self._at(pos, "|"):
                option, pos = self.prompt(pos + 1)
                options.append(option)
            if self._at(pos, "]"):
                return [_Alternate(options)], pos + 1
            return None
        if not self._at(pos, ":"):
            return None
        after_colon = pos + 1
        number = self._number_close(after_colon)
        if number is not None:
            return [_Scheduled(None, first, number[0])], number[1]
        second, pos = self.prompt(after_colon)
        if self._at(pos, ":"):
            number = self._number_close(pos + 1)
            if number is not None:
                return [_Scheduled(first, second, number[0])], number[1]
        return None

    def _number_close(self, pos: int) -> tuple[str, int] | None:
        """`[ws] NUMBER [ws] ]` at `pos`: (the number's text, the position after the bracket)."""
        ws = _WHITESPACE_RE.match(self.text, pos)
        if ws is not None:
            pos = ws.end()
        number = _NUMBER_RE.match(self.text, pos)
        if number is None:
            return None
        pos = number.end()
        ws = _WHITESPACE_RE.match(self.text, pos)
        if ws is not None:
            pos = ws.end()
        return (number.group(), pos + 1) if self._at(pos, "]") else None

    def _at(self, pos: int, ch: str) -> bool:
        return pos < len(self.text) and self.text[pos] == ch


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _collect_steps(nodes: list, steps: int, int_offset: float, flt_offset: float) -> list[int]:
    ends = {steps}
    for node in _walk(nodes):
        if isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            continue
        value = float(node.number)
        value = (value - flt_offset) * steps if "." in node.number else value - int_offset
        if not math.isfinite(value):
            raise KxlError(
                f"prompt editing step {node.number!r} is out of range", hint="use a step or a fraction"
            )
        node.when = min(steps, int(value))
        if node.when >= 1:
            ends.add(node.when)
    return sorted(ends)


def _text_at(nodes: list | None, step: int) -> str:
    if not nodes:
        return ""
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            out.append(_text_at(node.before, step) if step <= node.when else _text_at(node.after, step))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """[(end step, text)] for one pass, as A1111's `get_learned_conditioning_prompt_schedules`: the text is used
    for the model calls up to and including its end step. `hires_steps` given: the schedule of the hires pass of
    `hires_steps` steps after a first pass of `steps` steps."""
    if hires_steps is None:
        count, int_offset, flt_offset = steps, 0.0, 0.0
    else:
        count, int_offset, flt_offset = hires_steps, float(steps), 1.0
    try:
        nodes = _Parser(prompt).top()
    except _NoParse:
        return [(count, prompt)]
    return [(end, _text_at(nodes, end)) for end in _collect_steps(nodes, count, int_offset, flt_offset)]


def has_schedule(prompt: str) -> bool:
    """True when `prompt` changes between steps (any editing or alternation that parses)."""
    try:
        nodes = _Parser(prompt).top()
    except _NoParse:
        return False
    return any(True for _ in _walk(nodes))


def active_entry(schedule: list[tuple[int, str]], call_index: int) -> int:
    """Index of the schedule entry for model call `call_index` (0-based within the pass): the first whose end step
    is >= it, or the first entry past the end (A1111's fallback)."""
    for i, (end, _) in enumerate(schedule):
        if call_index <= end:
            return i
    return 0
