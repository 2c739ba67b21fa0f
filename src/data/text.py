"""The text-cleaning engine: vectorised over one column with polars.

Regex steps run in polars (Rust, over the whole column). Steps that need
Python (entities, ftfy, the lossy '¿') run only on the values that need them,
found by a vectorised test first: that is where the speed comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import ftfy
import polars as pl

from src.data.html import (
    BLOCK_PATTERN,
    DROP_PATTERNS,
    HAS_TAG_PATTERN,
    SPLIT_AMP_PATTERN,
    TAG_PATTERN,
    UNDECODED_PATTERN,
    entity_table,
    unescape_entities,
)
from src.data.lossy import LOSSY, repair_lossy
from src.data.options import CleaningOptions

# Values worth handing to ftfy: C1 controls, or a lead byte of UTF-8 read as
# latin-1/cp1252 followed by a continuation byte (Ã©, Ã¨, â€™, Â ...).
MOJIBAKE_PATTERN = (
    "[\u0080-\u009f]|[\u00c2-\u00c5\u00e2\u00ef]"
    "[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
# Removed outright; whitespace controls (\t \n \v \f \r, U+0085) are collapsed instead.
# Bidirectional overrides and isolates (U+202A-E, U+2066-9) go too: they can
# make a title display reversed ("Trojan Source" spoofing).
CONTROL_PATTERN = (
    "[\u0000-\u0008\u000e-\u001f\u007f-\u0084\u0086-\u009f\u200b-\u200d"
    "\u202a-\u202e\u2060\u2066-\u2069\ufeff]"
)
WHITESPACE_PATTERN = r"\s+"
# The same result, faster: a lone plain space is already right, so only runs of
# two or more, or a lone tab/newline/NBSP, are rewritten.
WHITESPACE_FAST_PATTERN = r"\s{2,}|[^\S ]"
# Text made only of these characters is already NFC: Latin up to U+02FF, general
# punctuation (but U+2000-1, which NFC rewrites) and currency signs. Only the other
# values pay for normalisation.
NFC_UNSTABLE_CHAR = "[^\u0000-\u02ff\u2002-\u206f\u20a0-\u20bf]"

FTFY_CONFIG = ftfy.TextFixerConfig(
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


def fix_mojibake(text: str) -> str:
    """ftfy's encoding repairs only (HTML, quotes and widths are other steps' business)."""
    return ftfy.fix_text(text, FTFY_CONFIG)


@dataclass
class ColumnCounts:
    """What cleaning did to one column of one chunk; chunks add up."""

    values: int = 0
    values_changed: int = 0
    html_stripped: int = 0
    entities_unescaped: int = 0
    mojibake_fixed: int = 0
    lossy_repaired: int = 0
    lossy_remaining: int = 0
    emptied: int = 0
    empty: int = 0
    chars_before: int = 0
    chars_after: int = 0

    def add(self, other: ColumnCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _apply(values: pl.Series, mask: pl.Series, func: Callable[[str], str]) -> tuple[pl.Series, int]:
    """Run a Python `func` on the masked values only; return the column and how many changed."""
    if not mask.any():
        return values, 0
    before = values.filter(mask).to_list()
    after = [func(v) for v in before]
    changed = sum(a != b for a, b in zip(after, before, strict=True))
    if not changed:
        return values, 0
    patch = pl.Series(values.name, after, dtype=pl.String)
    idx = mask.arg_true()
    # scatter writes in place: work on a clone so callers' series stay as they were
    return values.clone().scatter(idx, patch), changed


def unescape_column(values: pl.Series) -> tuple[pl.Series, int]:
    """`unescape_entities` over a column, the same result, mostly without Python.

    Complete entities are decoded by a table (Aho-Corasick in polars) pass after
    pass, as `unescape_nested` does; a value where an '&' could still start an
    entity is decoded again from its original text by the exact Python function.
    """
    has_amp = values.str.contains("&", literal=True)
    if not has_amp.any():
        return values, 0
    keys, decoded = entity_table()
    before = values.filter(has_amp)
    out = before.str.replace_many(keys, decoded)
    for _ in range(3):
        again = out.str.replace_all(SPLIT_AMP_PATTERN, "&").str.replace_many(keys, decoded)
        if again.equals(out):
            break
        out = again
    slow = out.str.contains(UNDECODED_PATTERN)
    if slow.any():
        exact = [unescape_entities(v) for v in before.filter(slow).to_list()]
        out = out.clone().scatter(slow.arg_true(), pl.Series(out.name, exact, dtype=pl.String))
    changed = int((out != before).sum())
    if not changed:
        return values, 0
    return values.clone().scatter(has_amp.arg_true(), out), changed


def clean_series(raw: pl.Series, options: CleaningOptions) -> tuple[pl.Series, ColumnCounts]:
    """Clean one text column; nulls are treated as empty strings."""
    s = raw.cast(pl.String).fill_null("")
    counts = ColumnCounts(values=s.len(), chars_before=int(s.str.len_chars().sum() or 0))
    original = s

    if options.strip_html:
        has_tag = s.str.contains(HAS_TAG_PATTERN)
        counts.html_stripped = int(has_tag.sum())
        if counts.html_stripped:
            for pattern in DROP_PATTERNS:
                s = s.str.replace_all(pattern, "")
            s = s.str.replace_all(BLOCK_PATTERN, " ").str.replace_all(TAG_PATTERN, "")

    if options.unescape_entities:
        s, counts.entities_unescaped = unescape_column(s)

    if options.fix_mojibake:
        s, counts.mojibake_fixed = _apply(s, s.str.contains(MOJIBAKE_PATTERN), fix_mojibake)

    if options.repair_lossy:
        has_lossy = s.str.contains(LOSSY, literal=True)
        if has_lossy.any():
            repaired = 0

            def repair(text: str) -> str:
                nonlocal repaired
                out, n = repair_lossy(text)
                repaired += n
                return out

            s, _ = _apply(s, has_lossy, repair)
            counts.lossy_repaired = repaired
    if s.str.contains(LOSSY, literal=True).any():
        counts.lossy_remaining = int(s.str.count_matches(LOSSY, literal=True).sum() or 0)

    maybe_unnormalised = s.str.contains(NFC_UNSTABLE_CHAR)
    if maybe_unnormalised.any():
        normalised = s.filter(maybe_unnormalised).str.normalize("NFC")
        s = s.clone().scatter(maybe_unnormalised.arg_true(), normalised)
    s = (
        s.str.replace_all(CONTROL_PATTERN, "")
        .str.replace_all(WHITESPACE_FAST_PATTERN, " ")
        .str.strip_chars(" ")
    )
    if options.lowercase:
        s = s.str.to_lowercase()
    if options.min_length > 1:
        short = s.str.len_chars() < options.min_length
        s = pl.select(pl.when(short).then(pl.lit("")).otherwise(s)).to_series().alias(s.name)

    empty_out = s == ""
    counts.empty = int(empty_out.sum())
    counts.emptied = int((empty_out & (original != "")).sum())
    counts.values_changed = int((s != original).sum())
    counts.chars_after = int(s.str.len_chars().sum() or 0)
    return s, counts
