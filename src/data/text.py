"""The text-cleaning engine: vectorised over one column with polars.

Most product text needs nothing but lowercasing. One pass over the column
(`MAY_CHANGE_PATTERN`) picks out the values that can need more, and each step then
runs only on the values it can change, found by a vectorised test first: the regex
steps in polars (Rust), the steps that need Python (ftfy, the lossy '¿', entities the
table leaves) on a few values. That is where the speed comes from; the result is the
one every step run over every value gives (tests/unit/test_engine_routing.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import polars as pl

from src.data.html import (
    BLOCK_ASCII_PATTERN,
    BLOCK_NEEDS_UNICODE_PATTERN,
    BLOCK_PATTERN,
    DROP_GATES,
    DROP_PATTERNS,
    ENTITY_TOKEN_PATTERN,
    HAS_TAG_PATTERN,
    MAY_DECODE_AGAIN_PATTERN,
    SPLIT_AMP_PATTERN,
    TAG_PATTERN,
    UNDECODED_PATTERN,
    entity_lookup,
    unescape_entities,
)
from src.data.lossy import LOSSY, repair_lossy
from src.data.mojibake import fix_mojibake
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


# Which values can a step before lowercasing change at all? Only those holding a
# character outside this set (a tag's '<', an entity's '&', '¿', a control or
# exotic whitespace, a mojibake lead, anything NFC could rewrite), two spaces in a
# row, or a space at either end. Printable ASCII but '<' and '&'; Latin-1 but NBSP,
# '¿' and the mojibake leads Â Ã Ä Å â ï; Latin Extended up to U+02FF; general
# punctuation but spaces, zero-widths, bidi controls and U+205F-206F; currency signs.
# Each range is a subset of what the steps' own patterns leave alone
# (tests/unit/test_engine_routing.py checks every step against it).
SAFE_CHARS = (
    " -%'-;=-~\u00a1-\u00be\u00c0\u00c1\u00c6-\u00e1\u00e3-\u00ee\u00f0-\u02ff"
    "\u2010-\u2027\u2030-\u205e\u20a0-\u20bf"
)
MAY_CHANGE_PATTERN = f"[^{SAFE_CHARS}]|  |^ | $"
# The same test after HTML and entities, for the steps that remain ('<' and '&' are
# left to be text by then).
MAY_CHANGE_AFTER_MARKUP_PATTERN = f"[^{SAFE_CHARS}<&]|  |^ | $"
# Values that need one of the character-level steps (ftfy, '¿', NFC, controls):
# exactly the union of those steps' own triggers.
NEEDS_CHAR_FIX_PATTERN = "|".join([MOJIBAKE_PATTERN, NFC_UNSTABLE_CHAR, CONTROL_PATTERN, LOSSY])


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


def _on_subset(
    values: pl.Series, mask: pl.Series, func: Callable[[pl.Series], pl.Series]
) -> pl.Series:
    """`func` over the masked values only, put back in place (the rest is left as it is).

    Every step's result for a value depends on that value alone, so a step run on
    the values that can change gives the column it would give run on all of them.
    """
    if not mask.any():
        return values
    if mask.all():
        return func(values)
    return values.clone().scatter(mask.arg_true(), func(values.filter(mask)))


def strip_tags(values: pl.Series) -> tuple[pl.Series, int]:
    """HTML to text over a column: the tag passes run on values holding a tag only.

    Each pass that drops elements runs only if some value can match it, tested just
    before it (an earlier pass can join a new `<!` or `<script`).
    """
    has_tag = values.str.contains(HAS_TAG_PATTERN)
    tagged = int(has_tag.sum())

    def strip(s: pl.Series) -> pl.Series:
        for gate, pattern in zip(DROP_GATES, DROP_PATTERNS, strict=True):
            if s.str.contains(gate).any():
                s = s.str.replace_all(pattern, "")
        exact = s.str.contains(BLOCK_NEEDS_UNICODE_PATTERN)
        s = _on_subset(s, ~exact, lambda v: v.str.replace_all(BLOCK_ASCII_PATTERN, " "))
        s = _on_subset(s, exact, lambda v: v.str.replace_all(BLOCK_PATTERN, " "))
        return s.str.replace_all(TAG_PATTERN, "")

    return (_on_subset(values, has_tag, strip) if tagged else values), tagged


def _entities_in(values: pl.Series) -> tuple[list[str], list[str]]:
    """The table's entities that occur in `values`, and what each decodes to.

    Building the matcher for all ~3,000 entities costs milliseconds per call; the
    few a chunk holds cost nothing. Entities never overlap (each ends at its first
    ';'), so replacing only those present gives the same text.
    """
    table = entity_lookup()
    found = values.str.extract_all(ENTITY_TOKEN_PATTERN).explode().drop_nulls().unique()
    keys = sorted(k for k in found.to_list() if k in table)
    return keys, [table[k] for k in keys]


def _decode_table(values: pl.Series) -> pl.Series:
    keys, decoded = _entities_in(values)
    return values.str.replace_many(keys, decoded) if keys else values


def unescape_column(values: pl.Series) -> tuple[pl.Series, int]:
    """`unescape_entities` over a column, the same result, mostly without Python.

    Complete entities are decoded by a table (Aho-Corasick in polars) pass after
    pass, as `unescape_nested` does; a value where an '&' could still start an
    entity is decoded again from its original text by the exact Python function.
    Later passes and the exact path see only the values a first pass left an '&' in.
    """
    has_amp = values.str.contains("&", literal=True)
    if not has_amp.any():
        return values, 0
    before = values.filter(has_amp)
    out = _decode_table(before)

    def again(s: pl.Series) -> pl.Series:
        for _ in range(3):
            step = _decode_table(s.str.replace_all(SPLIT_AMP_PATTERN, "&"))
            if step.equals(s):
                break
            s = step
        return s

    # Another pass changes only a value holding a complete entity or a split '& amp;'.
    out = _on_subset(out, out.str.contains(MAY_DECODE_AGAIN_PATTERN), again)
    slow = out.str.contains(UNDECODED_PATTERN)
    if slow.any():
        exact = [unescape_entities(v) for v in before.filter(slow).to_list()]
        out = out.clone().scatter(slow.arg_true(), pl.Series(out.name, exact, dtype=pl.String))
    changed = int((out != before).sum())
    if not changed:
        return values, 0
    return values.clone().scatter(has_amp.arg_true(), out), changed


def _fix_characters(s: pl.Series, options: CleaningOptions, counts: ColumnCounts) -> pl.Series:
    """Mojibake, the lossy '¿', NFC and control characters, in that order."""
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

    s = _on_subset(s, s.str.contains(NFC_UNSTABLE_CHAR), lambda v: v.str.normalize("NFC"))
    return s.str.replace_all(CONTROL_PATTERN, "")


def _fix_text(s: pl.Series, options: CleaningOptions, counts: ColumnCounts) -> pl.Series:
    """Every step before lowercasing, on values `MAY_CHANGE_PATTERN` picked out."""
    if options.strip_html:
        s, counts.html_stripped = strip_tags(s)
    if options.unescape_entities:
        s, counts.entities_unescaped = unescape_column(s)

    def fix_characters(v: pl.Series) -> pl.Series:
        return _fix_characters(v, options, counts)

    def fix_characters_and_spaces(v: pl.Series) -> pl.Series:
        v = _on_subset(v, v.str.contains(NEEDS_CHAR_FIX_PATTERN), fix_characters)
        return v.str.replace_all(WHITESPACE_FAST_PATTERN, " ").str.strip_chars(" ")

    after_markup = s.str.contains(MAY_CHANGE_AFTER_MARKUP_PATTERN)
    return _on_subset(s, after_markup, fix_characters_and_spaces)


def clean_series(raw: pl.Series, options: CleaningOptions) -> tuple[pl.Series, ColumnCounts]:
    """Clean one text column; nulls are treated as empty strings."""
    s = raw.cast(pl.String).fill_null("")
    counts = ColumnCounts(values=s.len(), chars_before=int(s.str.len_chars().sum() or 0))
    original = s
    s = _on_subset(s, s.str.contains(MAY_CHANGE_PATTERN), lambda v: _fix_text(v, options, counts))
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
