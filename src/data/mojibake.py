"""Mojibake repair: ftfy's encoding fixes only, with ftfy imported on first use.

`fix_mojibake` gives exactly `ftfy.fix_text(text, ftfy_config())` (pinned by
tests/unit/test_engine_routing.py) but about a third faster on long values: ftfy's
`fix_and_explain` runs `fix_encoding` again on every segment it has just repaired
to confirm that nothing changes, and `fix_encoding` already returns a text it leaves
as it is (it loops until its step changes nothing). That confirming pass, the most
expensive step on a long value, is skipped when the text is the one it returned.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

# The fixes `ftfy.fix_and_explain` applies after `fix_encoding`, in its order.
_AFTER_ENCODING = (
    "fix_c1_controls",
    "fix_latin_ligatures",
    "fix_character_width",
    "uncurl_quotes",
    "fix_line_breaks",
    "fix_surrogates",
    "remove_terminal_escapes",
    "remove_control_chars",
)


@lru_cache(maxsize=1)
def ftfy_config() -> Any:
    """ftfy's encoding repairs only (HTML, quotes and widths are other steps' business)."""
    import ftfy  # ~50 ms of imports and tables: only for values that look broken

    return ftfy.TextFixerConfig(
        unescape_html=False,
        fix_latin_ligatures=False,
        fix_character_width=False,
        uncurl_quotes=False,
        fix_line_breaks=False,
        fix_surrogates=True,
        remove_control_chars=False,
        normalization=None,
        explain=False,
    )


@lru_cache(maxsize=1)
def _steps() -> tuple[Callable[[str], str], tuple[Callable[[str], str], ...], int]:
    """ftfy's `fix_encoding`, the other fixes the config turns on, the segment length limit."""
    import ftfy
    import ftfy.fixes

    config = ftfy_config()
    # fix_and_explain's other steps (HTML, normalisation) must be off for `_fix_segment`.
    assert config.unescape_html is False and config.normalization is None
    fixers = tuple(getattr(ftfy.fixes, name) for name in _AFTER_ENCODING if getattr(config, name))
    return ftfy.fix_encoding, fixers, config.max_decode_length


def _fix_segment(
    text: str, fix_encoding: Callable[[str], str], fixers: tuple[Callable[[str], str], ...]
) -> str:
    """`ftfy.fix_and_explain(text, config).text`, never re-running `fix_encoding` on its output."""
    settled = None  # a text `fix_encoding` is known to return unchanged
    while True:
        before = text
        if text != settled:
            text = settled = fix_encoding(text)
        for fixer in fixers:
            text = fixer(text)
        if text == before:
            return text


def fix_mojibake(text: str) -> str:
    """`ftfy.fix_text(text, ftfy_config())`: line by line, as ftfy does."""
    fix_encoding, fixers, limit = _steps()
    out = []
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + limit)
        out.append(_fix_segment(text[pos:end], fix_encoding, fixers))
        pos = end
    return "".join(out)
