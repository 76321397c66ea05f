"""How a raw Danbooru tag name is written in captions, in the UI and in A1111 prompts.

One place for these rules, because the dataset builder, the trainer's caption preview, the Tags tab and the
Generate tab must all agree on them (specs/dataset.md §3.4 and §3.5).
"""

from __future__ import annotations

# A1111's prompt parser treats these as syntax; a backslash before one makes it literal (specs/generation.md §1).
# The backslash itself comes first so the escapes we add are not escaped again.
_PROMPT_SPECIALS = ("\\", "(", ")", "[", "]")


def tag_to_caption_text(name: str) -> str:
    """HakuBooru's caption form of a raw tag name (specs/dataset.md §3.4).

    Names of 3 code points or fewer stay verbatim (emoticons such as `^_^`, `o_o`); longer names have every `_`
    replaced by a space (`rice_shower_(umamusume)` -> `rice shower (umamusume)`). No escaping: captions keep
    parentheses as they are.
    """
    return name if len(name) <= 3 else name.replace("_", " ")


def escape_prompt_text(text: str) -> str:
    """Escape text for an A1111 prompt so brackets are literal, not emphasis: `a (b)` -> `a \\(b\\)`.

    Backslashes are doubled too: A1111 drops a lone backslash (`a\\b` parses to `ab`), so a name that holds one
    would otherwise lose it.
    """
    for ch in _PROMPT_SPECIALS:
        text = text.replace(ch, "\\" + ch)
    return text


def unescape_prompt_text(text: str) -> str:
    """Inverse of `escape_prompt_text` for text typed in a prompt box (`\\(` -> `(`), used to look tags up."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _PROMPT_SPECIALS:
            out.append(text[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tag_to_prompt_text(name: str) -> str:
    """What autocompletion inserts into an A1111 prompt: caption form, then prompt escaping."""
    return escape_prompt_text(tag_to_caption_text(name))


def normalize_tag_query(text: str) -> str:
    """Lookup key for a tag name, alias or typed query: unescaped, lower-case, spaces as underscores.

    Leading whitespace is dropped; a trailing space is kept as `_` because a user who typed "long " is asking for
    "long_..." tags, not "longbow".
    """
    return unescape_prompt_text(text).lstrip().lower().replace(" ", "_")


def normalize_tag_name(name: str) -> str:
    """Index key of a raw tag name or alias: lower-case, surrounding whitespace gone, spaces as underscores."""
    return name.strip().lower().replace(" ", "_")
