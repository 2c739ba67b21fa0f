"""One big CSV cleaned as independent parts, then merged: the engine side of a split job.

Cleaning a row depends on that row alone (`clean_text`); only duplicates depend
on order (`dedupe`). So each part cleans a byte range of whole records and
keeps every row, and the merge reads the parts in input order and applies the
duplicate pass and the formula guard once, with one `RunState`, exactly as a
single run does. The merged output is byte-identical to `clean_file`'s.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from src.data.formats import OutputFormat
from src.data.frame import (
    MAX_ID_EXAMPLES,
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
from src.data.writer import AtomicWriter, copy_into

SCAN_BYTES = 8 << 20
BOM = b"\xef\xbb\xbf"
# What may stand beside a quote: before an opening one, after a closing one (b"": another
# quote, or the start or end of the file).
FIELD_EDGES = frozenset((b"", b",", b"\r", b"\n"))
QUOTE_NEIGHBOURS = frozenset(b',\r\n"')  # beside a quote, as byte values: those or a quote
DENSE_QUOTES = 64  # a block with more than one quote in this many bytes is split at them


@dataclass(frozen=True)
class PartPlan:
    """Byte ranges of whole records after the header line, in input order."""

    ranges: list[tuple[int, int]]


def plan_parts(path: Path, part_bytes: int) -> PartPlan | None:
    """Cut a CSV at record starts about every `part_bytes`; None when it cannot be cut safely.

    A newline ends a record when the number of quotes before it is even. That
    holds when every quote sits where RFC 4180 puts one: an opening quote at the
    start of a field, a closing one at its end, or a doubled quote inside. The
    scan checks exactly that, a block at a time with bytes methods (C loops over
    memory), read rather than mapped so the file never counts in the worker's RSS,
    and gives up on anything else (a stray quote in an unquoted field, an unterminated
    field), leaving the file to a single run, which reads it as always.
    """
    size = path.stat().st_size
    inside = 0  # 1 when a block starts inside a quoted field
    cuts: list[int] = []  # record starts chosen so far; cuts[0] ends the header
    target = 0
    with path.open("rb") as fh:
        start = len(BOM) if fh.read(len(BOM)) == BOM else 0
        buffer = bytearray(min(SCAN_BYTES, size))  # reused: no fresh pages per block
        while start < size:
            block, end = _block(fh.fileno(), buffer, start, size)
            if not end:
                return None  # the file shrank while we read it
            quotes = _count_quotes(block, end, inside)
            if quotes is None:
                return None
            # Record starts: the first newline past each target outside quotes.
            counted = before = 0  # quotes in block[:counted]
            while target < start + end:
                n = block.find(b"\n", max(target - start, 0), end)
                if n < 0:
                    break
                before += block.count(b'"', counted, n)
                counted = n
                if (inside + before) % 2 == 0:
                    cuts.append(start + n + 1)
                    target = cuts[-1] + part_bytes
                else:
                    target = start + n + 1
            inside = (inside + quotes) % 2
            start += end
    if inside or not cuts:
        return None  # a field never closed, or no record after the header: a single run says so
    bounds = [c for c in cuts if c < size] + [size]
    ranges = [(s, e) for s, e in itertools.pairwise(bounds) if e > s]
    return PartPlan(ranges) if ranges else None


def _block(fd: int, buffer: bytearray, start: int, size: int) -> tuple[bytearray, int]:
    """About SCAN_BYTES read from `start` (into `buffer`), and where in them the block
    ends: just after a newline (or at the end of the file), so a quote's neighbours are
    in its block. A longer line than the buffer gets a buffer of its own."""
    data = buffer
    got = os.preadv(fd, [memoryview(data)[: size - start]], start)
    while start + got < size:
        if (last := data.rfind(b"\n", 0, got)) >= 0:
            return data, last + 1
        more = os.pread(fd, min(SCAN_BYTES, size - start - got), start + got)
        if not more:
            break
        data = data[:got] + more
        got = len(data)
    return data, got


def _count_quotes(block: bytearray, end: int, inside: int) -> int | None:
    """The number of quotes in block[:end], or None when one is misplaced: an opening
    quote (an even count before it) must start a field, the others end one or double
    a quote. `inside`: the block starts inside a quoted field.

    The cost follows the quotes: a loop over them where they are few, one split
    where they are many (then only the outside pieces' first and last bytes need a look).
    """
    count = block.count(b'"', 0, end)
    if count * DENSE_QUOTES > end:
        pieces = bytes(block[:end]).split(b'"')
        outside = pieces[inside::2]
        after_closing = outside if inside else outside[1:]
        # The last outside piece precedes a quote unless it ends the block.
        before_opening = outside[:-1] if (count - inside) % 2 == 0 else outside
        well_placed = {p[:1] for p in after_closing} <= FIELD_EDGES and {
            p[-1:] for p in before_opening
        } <= FIELD_EDGES
        return count if well_placed else None
    at, seen = block.find(b'"', 0, end), 0
    while at >= 0:
        if (inside + seen) % 2 == 0:  # opening: what precedes it (if not the block's start)
            if at and block[at - 1] not in QUOTE_NEIGHBOURS:
                return None
        elif at + 1 < end and block[at + 1] not in QUOTE_NEIGHBOURS:  # closing or doubling
            return None
        seen += 1
        at = block.find(b'"', at + 1, end)
    return seen


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
        keys["nbytes"] = pl.Series(_row_lengths(data, frame.height), dtype=pl.UInt32)
    if not keys:  # a column keeps the row count through Parquet
        keys["formulas"] = pl.repeat(0, frame.height, dtype=pl.UInt32, eager=True)
    return data, pl.DataFrame(keys, height=frame.height)


def _row_lengths(data: bytes, rows: int) -> list[int]:
    """Byte length of each CSV line we wrote: a newline ends one unless it lies inside
    quotes (our writer quotes every quote and newline in a value)."""
    lines = data.split(b"\n")[:-1]
    if len(lines) == rows:  # no value holds a newline
        return [len(line) + 1 for line in lines]
    lengths: list[int] = []
    pending = quotes = 0
    for line in lines:
        pending += len(line) + 1
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            lengths.append(pending)
            pending = quotes = 0
    if len(lengths) != rows or pending:
        raise RuntimeError(f"CSV lines of a part: {len(lengths)} found, {rows} expected")
    return lengths


def _write_keys(keys: list[pl.DataFrame], target: Path) -> None:
    frame = pl.concat(keys) if keys else pl.DataFrame({"id": pl.Series([], dtype=pl.String)})
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        frame.write_parquet(tmp, statistics=False)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    (A split job whose files share a folder merges part by part instead, as parts
    finish: `src.jobs.merge`, with `judge_part` and `append_part`.)
    """
    started = time.perf_counter()
    state = RunState()
    add_part_counts(state, results)
    writer = AtomicWriter(target, fmt)
    try:
        if fmt == "csv":
            writer.write(empty_frame(header))  # the header line, as a single run writes it
        for index, (rows, keys) in enumerate(parts):
            check_part_size(rows, results[index].nbytes, index)
            if fmt == "csv":
                assert keys is not None
                runs = judge_part(keys, state, rows)
                if runs is None:
                    writer.copy_csv_file(rows)
                else:
                    data = memoryview(rows.read_bytes())  # one part: bounded by PART_MB
                    for first, stop in runs:
                        writer.write_csv_bytes(data[first:stop])
            else:
                _merge_parquet_part(rows, writer, options, header, state)
            if on_part:
                on_part(index)
        writer.commit(header)
    except BaseException:
        writer.abort()
        raise
    return report(state, options, time.perf_counter() - started, fmt, **report_fields)


def add_part_counts(state: RunState, results: Iterable[PartResult]) -> None:
    """Rows read and per-column counts: the parts' sums."""
    for result in results:
        state.rows_in += result.rows
        for name, counts in result.counts.items():
            state.counts.setdefault(name, ColumnCounts()).add(ColumnCounts(**counts))


def report(
    state: RunState, options: CleaningOptions, duration: float, fmt: OutputFormat, **fields: Any
) -> CleaningReport:
    from src.data.pipeline import build_report

    return build_report(state, options, output_format=fmt, duration=duration, **fields)


def check_part_size(rows: Path, nbytes: int, index: int) -> None:
    """A part's file must hold what its cleaner wrote (parts are not fsynced)."""
    size = rows.stat().st_size
    if nbytes and size != nbytes:
        raise RuntimeError(
            f"part {index + 1}'s file holds {size:,} bytes, "
            f"{nbytes:,} were written: clean the input again"
        )


def empty_frame(header: list[str]) -> pl.DataFrame:
    return pl.DataFrame({c: pl.Series(c, [], dtype=pl.String) for c in header})


def judge_part(
    keys_path: Path, state: RunState, rows: Path | None = None, *, ids: bool = True
) -> list[tuple[int, int]] | None:
    """Judge a CSV part's rows against what came before (`state`, updated as one run's
    would be): the byte ranges of its runs of kept rows, or None when every row stays.
    `rows`: the part's rows file, checked against the line lengths its keys give.
    `ids` False: leave repeated ids to `count_duplicate_ids` over all parts at the end
    (they change the report, never the bytes).

    Deterministic: judging the same parts in the same order from a fresh state gives
    the same state, so a merger that takes over rebuilds it from the keys files.
    """
    keys = pl.read_parquet(keys_path)
    id_column = keys.get_column("id") if ids and "id" in keys.columns else None
    hashes = keys.get_column("row_hash") if "row_hash" in keys.columns else None
    judged = judge_duplicates(id_column, hashes, keys.height, state)
    formulas = keys.get_column("formulas") if "formulas" in keys.columns else None
    keep = None if judged is None else pl.Series("keep", judged, dtype=pl.Boolean)
    if keep is None or keep.all():
        state.rows_out += keys.height
        state.formulas_neutralised += int(formulas.sum()) if formulas is not None else 0
        return None
    lengths = keys.get_column("nbytes").cast(pl.Int64)
    if rows is not None and (size := rows.stat().st_size) != lengths.sum():
        raise RuntimeError(f"part {rows.name}: {size:,} bytes, its keys say {lengths.sum():,}")
    state.rows_out += int(keep.sum())
    if formulas is not None:
        state.formulas_neutralised += int(formulas.filter(keep).sum())
    runs = (
        pl.DataFrame({"keep": keep, "nbytes": lengths})
        .with_columns(stop=pl.col("nbytes").cum_sum(), run=pl.col("keep").rle_id())
        .filter("keep")
        .group_by("run", maintain_order=True)
        .agg(first=(pl.col("stop") - pl.col("nbytes")).first(), stop=pl.col("stop").last())
    )
    return list(
        zip(runs.get_column("first").to_list(), runs.get_column("stop").to_list(), strict=True)
    )


def count_duplicate_ids(keys_paths: list[Path], state: RunState) -> None:
    """Repeated ids over all parts at once, as `judge_duplicates` counts them chunk by
    chunk in one run (a non-empty id whose 64-bit hash came earlier; the first
    MAX_ID_EXAMPLES such values in input order): one vectorised pass instead of a
    hash-set step per part. Holds 8 bytes a row (the hashes), as the hash set does."""
    paths = [p for p in keys_paths if _has_ids(p)]
    hashes, blanks = [], []
    for path in paths:
        ids = _ids(path)
        hashes.append(ids.hash(seed=0))
        blanks.append(ids == "")
    if not paths:
        return
    dup = ~pl.concat(hashes).is_first_distinct() & ~pl.concat(blanks)
    state.duplicate_ids += int(dup.sum())
    start = 0
    for path, part in zip(paths, hashes, strict=True):  # the examples' values, in order
        if len(state.duplicate_id_examples) >= MAX_ID_EXAMPLES:
            break
        here = dup.slice(start, part.len())
        start += part.len()
        if here.any():
            for value in _ids(path).filter(here).unique(maintain_order=True).to_list():
                if value not in state.duplicate_id_examples:
                    state.duplicate_id_examples.append(value)
            del state.duplicate_id_examples[MAX_ID_EXAMPLES:]


def _ids(keys_path: Path) -> pl.Series:
    return pl.read_parquet(keys_path, columns=["id"]).get_column("id").cast(pl.String).fill_null("")


def _has_ids(keys_path: Path) -> bool:
    return "id" in pl.read_parquet_schema(keys_path)


def append_part(fd: int, offset: int, rows: Path, runs: list[tuple[int, int]] | None) -> int:
    """Write a judged part's kept rows into the file `fd` at `offset`; the offset after.

    Positional writes, never the file's own position: a merger that lost its claim and
    still writes, writes the same bytes at the same place as the one that took over.
    """
    with rows.open("rb") as fh:
        if runs is None:
            size = os.fstat(fh.fileno()).st_size
            copy_into(fh.fileno(), fd, size, offset)
            return offset + size
        data = memoryview(fh.read())  # one part: bounded by PART_MB
    for first, stop in runs:
        written = 0
        while written < stop - first:
            written += os.pwrite(fd, data[first + written : stop], offset + written)
        offset += stop - first
    return offset


def _merge_parquet_part(
    rows: Path, writer: AtomicWriter, options: CleaningOptions, header: list[str], state: RunState
) -> None:
    for frame in pl.read_parquet(rows).iter_slices(options.chunk_rows):
        frame.columns = header  # polars renames an empty (index) column name
        writer.write(dedupe(frame, options, state))
