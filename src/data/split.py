"""One big CSV cleaned as independent parts, then merged: the engine side of a split job.

Cleaning a row depends on that row alone (`clean_text`); only duplicates depend
on order (`dedupe`). So each part cleans a byte range of whole records and
keeps every row, and the merge reads the parts in input order and applies the
duplicate pass and the formula guard once, with one `RunState`, exactly as a
single run does. The merged output is byte-identical to `clean_file`'s.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from src.data.formats import OutputFormat
from src.data.frame import (
    RunState,
    clean_text,
    dedupe,
    judge_duplicates,
    neutralise_rows,
    row_hashes,
)
from src.data.io import iter_csv_range
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.data.text import ColumnCounts
from src.data.writer import AtomicWriter

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
    scan checks exactly that (numpy, a block at a time, read into memory
    block by block rather than mapped, so the file never counts in the worker's
    RSS) and gives up on anything else (a stray quote in an unquoted field, an
    unterminated field), leaving the file to a single run, which reads it as always.
    """
    size = path.stat().st_size
    quotes_before = 0
    cuts: list[int] = []  # record starts chosen so far; cuts[0] ends the header
    target = 0
    with path.open("rb") as fh:
        first = len(BOM) if fh.read(len(BOM)) == BOM else 0
        before = COMMA  # the file's start acts as a field start
        for a in range(first, size, SCAN_BYTES):
            b = min(a + SCAN_BYTES, size)
            raw = os.pread(fh.fileno(), b - a + (b < size), a)  # one byte past the block
            data = np.frombuffer(raw, dtype=np.uint8)
            q = np.flatnonzero(data[: b - a] == QUOTE)
            if q.size:
                prev = data[np.maximum(q - 1, 0)]
                prev[q == 0] = before
                after = data[np.minimum(q + 1, data.size - 1)]
                after[q + 1 >= data.size] = LF  # the end of the file ends a field
                if not _quotes_well_placed(prev, after, quotes_before):
                    return None
            # Record starts: the first newline past each target outside quotes.
            while target < b:
                n = raw.find(b"\n", max(target - a, 0), b - a)
                if n < 0:
                    break
                if (quotes_before + int(np.searchsorted(q, n))) % 2 == 0:
                    cuts.append(a + n + 1)
                    target = cuts[-1] + part_bytes
                else:
                    target = a + n + 1
            quotes_before += q.size
            before = int(data[b - a - 1])
    if quotes_before % 2 or not cuts:
        return None  # a field never closed, or no record after the header: a single run says so
    bounds = [c for c in cuts if c < size] + [size]
    ranges = [(s, e) for s, e in pairwise(bounds) if e > s]
    return PartPlan(ranges) if ranges else None


def _quotes_well_placed(prev: np.ndarray, after: np.ndarray, quotes_before: int) -> bool:
    """Opening quotes (an even count before them) start a field; the others end one
    or double a quote."""
    opening = (quotes_before + np.arange(prev.size)) % 2 == 0
    open_ok = np.isin(prev, (COMMA, LF, CR, QUOTE))
    close_ok = np.isin(after, (COMMA, LF, CR, QUOTE))
    return bool(np.all(np.where(opening, open_ok, close_ok)))


@dataclass
class PartResult:
    """What cleaning one part found: rows read and the per-column counts (JSON-ready)."""

    rows: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    nbytes: int = 0  # the rows file's size: the merge checks it (parts are not fsynced)


def clean_part(
    source: Path,
    start: int,
    end: int,
    header: list[str],
    encoding: str,
    options: CleaningOptions,
    fmt: OutputFormat,
    rows_target: Path,
    keys_target: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PartResult:
    """Clean the records in bytes [start, end), keeping every row.

    For a CSV result the part writes its rows as final CSV lines (formulas
    already neutralised) plus, in `keys_target`, what the merge needs to judge
    duplicates: each row's id, hash, neutralised cells and byte length. The
    merge then copies bytes instead of parsing and writing again. For Parquet,
    the cleaned rows go to a Parquet file.
    `on_progress(rows_done, bytes_done)` runs after each chunk; what it raises
    stops the part and leaves no file.
    """
    state = RunState()
    csv_out = fmt == "csv"
    if csv_out and keys_target is None:
        raise ValueError("a CSV part needs a keys file")
    # Not fsynced: a part is an intermediate file, and the merge checks its size.
    writer = AtomicWriter(rows_target, fmt, header=False, durable=False)
    keys: list[pl.DataFrame] = []
    try:
        for chunk, done in iter_csv_range(source, start, end, header, encoding, options):
            cleaned = clean_text(chunk, options, state)
            if csv_out:
                data, chunk_keys = _csv_rows(cleaned, options)
                writer.write_csv_bytes(data)
                keys.append(chunk_keys)
            else:
                writer.write(cleaned)
            if on_progress:
                on_progress(state.rows_in, done)
        if csv_out and keys_target is not None:
            _write_keys(keys, keys_target)
        writer.commit(header)
    except BaseException:
        writer.abort()
        raise
    counts = {name: vars(c) for name, c in state.counts.items()}
    return PartResult(state.rows_in, counts, rows_target.stat().st_size)


def _csv_rows(frame: pl.DataFrame, options: CleaningOptions) -> tuple[bytes, pl.DataFrame]:
    """A chunk's final CSV lines, and its keys (computed before the formula guard, as
    `dedupe` sees rows in a single run)."""
    keys: dict[str, Any] = {}
    if options.id_column in frame.columns:
        keys["id"] = frame.get_column(options.id_column).cast(pl.String).fill_null("")
    if options.drop_duplicates:
        keys["row_hash"] = row_hashes(frame)
    if options.neutralise_formulas:
        frame, keys["formulas"] = neutralise_rows(frame)
    buffer = io.BytesIO()
    frame.write_csv(buffer, include_header=False)
    data = buffer.getvalue()
    if options.drop_duplicates:
        keys["nbytes"] = _row_lengths(data, frame.height)
    return data, pl.DataFrame(keys, height=frame.height)


def _row_lengths(data: bytes, rows: int) -> np.ndarray:
    """Byte length of each CSV line we wrote (our writer quotes every quote and newline)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(arr == QUOTE)
    newlines = np.flatnonzero(arr == LF)
    ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0] + 1
    if ends.size != rows:
        raise RuntimeError(f"CSV lines of a part: {ends.size} found, {rows} expected")
    return np.diff(ends, prepend=0).astype(np.uint32)


def _write_keys(keys: list[pl.DataFrame], target: Path) -> None:
    writer = AtomicWriter(target, "parquet", durable=False)
    try:
        for frame in keys:
            writer.write(frame)
        writer.commit(["id"])  # a part with no row
    except BaseException:
        writer.abort()
        raise


def merge_parts(
    parts: Iterable[tuple[Path, Path | None]],
    results: list[PartResult],
    target: Path,
    options: CleaningOptions,
    fmt: OutputFormat,
    *,
    header: list[str],
    on_part: Callable[[int], None] | None = None,
    **report_fields: Any,
) -> CleaningReport:
    """Concatenate cleaned parts (rows file, keys file) in order, dropping duplicates as
    one run would.

    A row is a duplicate when the same cleaned row came earlier anywhere in the
    input, in this part or an earlier one: one `SeenHashes` spans all parts.
    Column counts add up; `report_fields` fill in the report's names and encoding.
    """
    from src.data.pipeline import build_report

    started = time.perf_counter()
    state = RunState()
    for result in results:
        state.rows_in += result.rows
        for name, counts in result.counts.items():
            state.counts.setdefault(name, ColumnCounts()).add(ColumnCounts(**counts))
    writer = AtomicWriter(target, fmt)
    try:
        if fmt == "csv":
            writer.write(_empty(header))  # the header line, as a single run writes it
        for index, (rows, keys) in enumerate(parts):
            if results[index].nbytes and rows.stat().st_size != results[index].nbytes:
                raise RuntimeError(
                    f"part {index + 1}'s file holds {rows.stat().st_size:,} bytes, "
                    f"{results[index].nbytes:,} were written: clean the input again"
                )
            if fmt == "csv":
                assert keys is not None
                _merge_csv_part(rows, keys, writer, state)
            else:
                _merge_parquet_part(rows, writer, options, header, state)
            if on_part:
                on_part(index)
        writer.commit(header)
    except BaseException:
        writer.abort()
        raise
    return build_report(
        state, options, output_format=fmt, duration=time.perf_counter() - started, **report_fields
    )


def _empty(header: list[str]) -> pl.DataFrame:
    return pl.DataFrame({c: pl.Series(c, [], dtype=pl.String) for c in header})


def _merge_csv_part(rows: Path, keys_path: Path, writer: AtomicWriter, state: RunState) -> None:
    keys = pl.read_parquet(keys_path)
    ids = keys.get_column("id") if "id" in keys.columns else None
    hashes = keys.get_column("row_hash").to_numpy() if "row_hash" in keys.columns else None
    keep = judge_duplicates(ids, hashes, keys.height, state)
    formulas = keys.get_column("formulas").to_numpy() if "formulas" in keys.columns else None
    if keep is None or keep.all():
        writer.copy_csv_file(rows)
        state.rows_out += keys.height
        state.formulas_neutralised += int(formulas.sum()) if formulas is not None else 0
        return
    data = memoryview(rows.read_bytes())  # one part: bounded by PART_MB
    ends = np.cumsum(keys.get_column("nbytes").to_numpy(), dtype=np.int64)
    if ends.size and ends[-1] != len(data):
        raise RuntimeError(f"part {rows.name}: {len(data)} bytes, its keys say {ends[-1]}")
    starts = ends - keys.get_column("nbytes").to_numpy()
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.astype(np.int8), [0]))))
    for first, stop in edges.reshape(-1, 2):  # runs of kept rows: [first, stop)
        writer.write_csv_bytes(data[starts[first] : ends[stop - 1]])
    state.rows_out += int(keep.sum())
    state.formulas_neutralised += int(formulas[keep].sum()) if formulas is not None else 0


def _merge_parquet_part(
    rows: Path, writer: AtomicWriter, options: CleaningOptions, header: list[str], state: RunState
) -> None:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(rows).iter_batches(batch_size=options.chunk_rows):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        frame.columns = header  # polars renames an empty (index) column name
        writer.write(dedupe(frame, options, state))
