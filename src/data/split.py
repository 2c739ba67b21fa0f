"""One big CSV cleaned as independent parts, then merged: the engine side of a split job.

Cleaning a row depends on that row alone (`clean_text`); only duplicates depend
on order (`dedupe`). So each part cleans a byte range of whole records and
keeps every row, and the merge reads the parts in input order and applies the
duplicate pass and the formula guard once, with one `RunState`, exactly as a
single run does. The merged output is byte-identical to `clean_file`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from src.data.frame import RunState, clean_text, dedupe, neutralise_formulas
from src.data.io import AtomicWriter, iter_csv_range
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.data.text import ColumnCounts

SCAN_BYTES = 8 << 20
QUOTE, COMMA, LF, CR = 0x22, 0x2C, 0x0A, 0x0D
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class PartPlan:
    """Byte ranges of whole records after the header line, in input order."""

    ranges: list[tuple[int, int]]


def plan_parts(path: Path, part_bytes: int) -> PartPlan | None:
    """Cut a CSV at record starts about every `part_bytes`; None when it cannot be cut safely.

    A newline ends a record when the number of quotes before it is even. That
    holds when every quote sits where RFC 4180 puts one: an opening quote at the
    start of a field, a closing one at its end, or a doubled quote inside. The
    scan checks exactly that (numpy, 8 MB at a time, ~1 s a GB) and gives up on
    anything else (a stray quote in an unquoted field, an unterminated field),
    leaving the file to a single run, which reads it as it always did.
    """
    size = path.stat().st_size
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        first = len(BOM) if bytes(data[: len(BOM)]) == BOM else 0
        quotes_before = 0
        cuts: list[int] = []  # record starts chosen so far; cuts[0] ends the header
        target = 0
        for a in range(first, size, SCAN_BYTES):
            b = min(a + SCAN_BYTES, size)
            block = data[a:b]
            q = np.flatnonzero(block == QUOTE) + a
            if q.size and not _quotes_well_placed(data, q, quotes_before, first, size):
                return None
            n = np.flatnonzero(block == LF) + a
            inside = (quotes_before + np.searchsorted(q, n)) % 2 == 1
            starts = n[~inside] + 1
            while starts.size:
                i = int(np.searchsorted(starts, target))
                if i == starts.size:
                    break
                cuts.append(int(starts[i]))
                target = cuts[-1] + part_bytes
                starts = starts[i + 1 :]
            quotes_before += q.size
    finally:
        del data
    if quotes_before % 2 or not cuts:
        return None  # a field never closed, or no record after the header: a single run says so
    bounds = [c for c in cuts if c < size] + [size]
    ranges = [(s, e) for s, e in pairwise(bounds) if e > s]
    return PartPlan(ranges) if ranges else None


def _quotes_well_placed(
    data: np.ndarray, q: np.ndarray, quotes_before: int, first: int, size: int
) -> bool:
    opening = (quotes_before + np.arange(q.size)) % 2 == 0
    prev = data[np.maximum(q - 1, 0)]
    after = data[np.minimum(q + 1, size - 1)]
    open_ok = (q == first) | np.isin(prev, (COMMA, LF, CR, QUOTE))
    close_ok = (q == size - 1) | np.isin(after, (COMMA, LF, CR, QUOTE))
    return bool(np.all(np.where(opening, open_ok, close_ok)))


@dataclass
class PartResult:
    """What cleaning one part found: rows read and the per-column counts (JSON-ready)."""

    rows: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def clean_part(
    source: Path,
    start: int,
    end: int,
    header: list[str],
    encoding: str,
    options: CleaningOptions,
    target: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> PartResult:
    """Clean the records in bytes [start, end) into a Parquet file, keeping every row.

    `on_progress(rows_done, bytes_done)` runs after each chunk; what it raises
    stops the part and leaves no file.
    """
    state = RunState()
    writer = AtomicWriter(target, "parquet")
    try:
        for chunk, done in iter_csv_range(source, start, end, header, encoding, options):
            writer.write(clean_text(chunk, options, state))
            if on_progress:
                on_progress(state.rows_in, done)
        writer.commit(header)
    except BaseException:
        writer.abort()
        raise
    return PartResult(state.rows_in, {name: vars(c) for name, c in state.counts.items()})


def merge_parts(
    parts: Iterable[Path],
    results: list[PartResult],
    target: Path,
    options: CleaningOptions,
    fmt: str,
    *,
    header: list[str],
    on_part: Callable[[int], None] | None = None,
    **report_fields: Any,
) -> CleaningReport:
    """Concatenate cleaned parts in order, dropping duplicates as one run would.

    A row is a duplicate when the same cleaned row came earlier anywhere in the
    input, in this part or an earlier one: one `SeenHashes` spans all parts.
    Column counts add up; `report_fields` fill in the report's names and encoding.
    """
    import pyarrow.parquet as pq

    from src.data.pipeline import build_report

    started = time.perf_counter()
    state = RunState()
    for result in results:
        state.rows_in += result.rows
        for name, counts in result.counts.items():
            state.counts.setdefault(name, ColumnCounts()).add(ColumnCounts(**counts))
    writer = AtomicWriter(target, fmt)
    try:
        for index, path in enumerate(parts):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=options.chunk_rows):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                frame.columns = header  # polars renames an empty (index) column name
                frame = dedupe(frame, options, state)
                if fmt == "csv" and options.neutralise_formulas:
                    frame = neutralise_formulas(frame, state)
                writer.write(frame)
            if on_part:
                on_part(index)
        writer.commit(header)
    except BaseException:
        writer.abort()
        raise
    return build_report(
        state, options, output_format=fmt, duration=time.perf_counter() - started, **report_fields
    )
