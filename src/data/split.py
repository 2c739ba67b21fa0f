"""One big CSV cleaned as independent parts: the engine side of a split job (the merge
is `src.data.part_merge`).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from src.data.formats import OutputFormat
from src.data.frame import (
    RunState,
    clean_text,
    neutralise_rows,
    row_hashes,
)
from src.data.io import iter_csv_range
from src.data.options import CleaningOptions
from src.data.writer import AtomicWriter

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
