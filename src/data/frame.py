"""Cleaning one chunk of rows, and the state that spans chunks (duplicates)."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from src.data.options import CleaningOptions
from src.data.text import ColumnCounts, clean_series

# Spreadsheet formula injection: cells a spreadsheet would evaluate.
FORMULA_PATTERN = r"^[=+\-@\t\r]"
NUMBER_PATTERN = r"^[+-]?[0-9]+(?:[.,][0-9]+)?$"
MAX_ID_EXAMPLES = 20


class SeenHashes:
    """A set of 64-bit row hashes kept as a few sorted, unique polars Series.

    8 bytes a row instead of a Python set's ~60, so memory stays small on
    inputs of millions of rows; levels of similar size are merged, like a
    binary counter, so the total work stays O(n log n).
    """

    def __init__(self) -> None:
        self._levels: list[pl.Series] = []

    def seen_before(self, hashes: pl.Series) -> pl.Series:
        """Mark hashes already seen (or repeated within `hashes`) and remember them all.

        Binary search in the levels (a hash set of a level would cost its size on
        every chunk); levels hold disjoint sorted Series, so the total work stays
        O(n log n).
        """
        hashes = hashes.cast(pl.UInt64)
        dup = ~hashes.is_first_distinct()
        for level in self._levels:
            pos = level.search_sorted(hashes).clip(upper_bound=level.len() - 1)
            dup |= level.gather(pos) == hashes
        new = hashes.filter(~dup).sort()
        while self._levels and self._levels[-1].len() <= new.len():
            new = self._levels.pop().append(new).sort()
        if new.len():
            self._levels.append(new)
        return dup


@dataclass
class RunState:
    """What one cleaning run carries from chunk to chunk."""

    rows_seen: SeenHashes = field(default_factory=SeenHashes)
    ids_seen: SeenHashes = field(default_factory=SeenHashes)
    counts: dict[str, ColumnCounts] = field(default_factory=dict)
    rows_in: int = 0
    rows_out: int = 0
    duplicate_rows_dropped: int = 0
    duplicate_ids: int = 0
    duplicate_id_examples: list[str] = field(default_factory=list)
    formulas_neutralised: int = 0


def index_columns(columns: list[str]) -> list[str]:
    """The unnamed leading row-index column, left out of duplicate detection."""
    return [c for c in columns[:1] if c == "" or c.startswith("Unnamed: ")]


def clean_frame(
    frame: pl.DataFrame, options: CleaningOptions, state: RunState | None = None
) -> pl.DataFrame:
    """Clean the text columns of one chunk; duplicates are judged against `state`."""
    state = RunState() if state is None else state
    return dedupe(clean_text(frame, options, state), options, state)


def clean_text(frame: pl.DataFrame, options: CleaningOptions, state: RunState) -> pl.DataFrame:
    """The per-row half of cleaning: each row's result depends on that row alone.

    So any range of rows can be cleaned anywhere (a split job's parts).
    """
    state.rows_in += frame.height
    cleaned = []
    for name in options.text_columns:
        series, counts = clean_series(frame.get_column(name), options)
        state.counts.setdefault(name, ColumnCounts()).add(counts)
        cleaned.append(series)
    return frame.with_columns(cleaned)


def dedupe(frame: pl.DataFrame, options: CleaningOptions, state: RunState) -> pl.DataFrame:
    """The order-dependent half: ids and rows seen before in this run, in input order."""
    ids = frame.get_column(options.id_column) if options.id_column in frame.columns else None
    hashes = row_hashes(frame) if options.drop_duplicates else None
    keep = judge_duplicates(ids, hashes, frame.height, state)
    if keep is not None:
        frame = frame.filter(keep)
    state.rows_out += frame.height
    return frame


def row_hashes(frame: pl.DataFrame) -> pl.Series:
    """One 64-bit hash per row, over every column but the row index."""
    keys = [c for c in frame.columns if c not in index_columns(frame.columns)]
    return frame.select(keys).hash_rows(seed=0)


def judge_duplicates(
    ids: pl.Series | None, hashes: pl.Series | None, height: int, state: RunState
) -> pl.Series | None:
    """Count repeated ids; with row `hashes`, the rows to keep (None: keep all).

    Works from ids and hashes alone, so a split job's merge can judge rows it
    never parses again.
    """
    if ids is not None and height:
        ids = ids.cast(pl.String).fill_null("")
        dup = state.ids_seen.seen_before(ids.hash(seed=0)) & (ids != "")
        state.duplicate_ids += int(dup.sum())
        if len(state.duplicate_id_examples) < MAX_ID_EXAMPLES and dup.any():
            for value in ids.filter(dup).unique(maintain_order=True).to_list():
                if value not in state.duplicate_id_examples:
                    state.duplicate_id_examples.append(value)
            del state.duplicate_id_examples[MAX_ID_EXAMPLES:]
    if hashes is not None and height:
        dup = state.rows_seen.seen_before(hashes)
        state.duplicate_rows_dropped += int(dup.sum())
        return ~dup
    return None


def neutralise_formulas(frame: pl.DataFrame, state: RunState) -> pl.DataFrame:
    """Prefix cells a spreadsheet would run as formulas with a quote (OWASP CSV injection)."""
    frame, per_row = neutralise_rows(frame)
    state.formulas_neutralised += int(per_row.sum())
    return frame


def neutralise_rows(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """`neutralise_formulas`, with the number of cells changed in each row."""
    per_row = pl.repeat(0, frame.height, dtype=pl.UInt32, eager=True)
    out = []
    for name, dtype in frame.schema.items():
        if dtype != pl.String:
            continue
        col = frame.get_column(name)
        risky = (col.str.contains(FORMULA_PATTERN) & ~col.str.contains(NUMBER_PATTERN)).fill_null(
            False
        )
        if risky.any():
            per_row += risky.cast(pl.UInt32)
            out.append(
                pl.select(pl.when(risky).then("'" + col).otherwise(col)).to_series().alias(name)
            )
    return (frame.with_columns(out) if out else frame), per_row.alias("formulas")
