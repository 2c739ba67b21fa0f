"""A split job's cleaned parts merged in input order: the result one run would write.

The duplicate pass and the formula guard's counts span all parts with one `RunState`;
each part's keys file (written by `src.data.split.clean_part`: row hashes, row byte
lengths, ids) says which rows to keep without parsing them again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl

from src.data.formats import OutputFormat
from src.data.frame import MAX_ID_EXAMPLES, RunState, dedupe, judge_duplicates
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.data.split import PartResult
from src.data.text import ColumnCounts
from src.data.writer import AtomicWriter, copy_into


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
