"""Clean a file into another, chunk by chunk, with a report: used by the CLI and the worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from src.data.formats import OutputFormat, input_format, output_format
from src.data.frame import RunState, clean_frame, neutralise_formulas
from src.data.io import (
    SNIFF_BYTES,
    check_input_file,
    iter_csv,
    iter_jsonl,
    iter_parquet,
    parquet_columns,
    parse_header,
)
from src.data.options import CleaningOptions
from src.data.report import CleaningReport, ColumnReport
from src.data.writer import AtomicWriter


@dataclass(frozen=True)
class Progress:
    """Where a run is; handed to the progress callback after every chunk."""

    rows_done: int
    bytes_done: int
    bytes_total: int


ProgressCallback = Callable[[Progress], None]


def clean_file(
    source: Path | str,
    target: Path | str,
    options: CleaningOptions | None = None,
    *,
    fmt: OutputFormat | None = None,
    on_progress: ProgressCallback | None = None,
) -> CleaningReport:
    """Clean `source` into `target` and return the report.

    Memory is bounded by the chunk size, not the input size. Any exception
    (bad input, or one raised by `on_progress` to cancel) leaves no output.
    """
    options = options or CleaningOptions()
    source, target = Path(source), Path(target)
    started = time.perf_counter()
    size = check_input_file(source)
    in_fmt, out_fmt = input_format(source), output_format(target, fmt)
    meta: dict[str, str] = {}
    reader = {"parquet": iter_parquet, "jsonl": iter_jsonl}.get(in_fmt, iter_csv)
    chunks = reader(source, options, meta)
    state = RunState()
    writer = AtomicWriter(target, out_fmt)
    columns: list[str] = []
    try:
        for chunk, bytes_done in chunks:
            columns = chunk.columns
            cleaned = clean_frame(chunk, options, state)
            if out_fmt == "csv" and options.neutralise_formulas:
                cleaned = neutralise_formulas(cleaned, state)
            writer.write(cleaned)
            if on_progress:
                on_progress(Progress(state.rows_in, bytes_done, size))
        writer.commit(columns or _header_only_columns(source, options, meta))
    except BaseException:
        writer.abort()
        raise
    return build_report(
        state,
        options,
        input=str(source),
        output=str(target),
        input_format=in_fmt,
        output_format=out_fmt,
        encoding=meta.get("encoding"),
        duration=time.perf_counter() - started,
    )


def build_report(
    state: RunState, options: CleaningOptions, *, duration: float, **fields: str | None
) -> CleaningReport:
    """The report of a run from what its state gathered (one run or a split job's merge)."""
    return CleaningReport(
        **fields,
        rows_in=state.rows_in,
        rows_out=state.rows_out,
        duplicate_rows_dropped=state.duplicate_rows_dropped,
        duplicate_ids=state.duplicate_ids,
        duplicate_id_examples=state.duplicate_id_examples,
        formulas_neutralised=state.formulas_neutralised,
        columns={
            name: ColumnReport(
                **vars(c),
                mean_length_before=c.chars_before / c.values if c.values else 0.0,
                mean_length_after=c.chars_after / c.values if c.values else 0.0,
            )
            for name, c in state.counts.items()
        },
        duration_s=round(duration, 4),
        rows_per_s=round(state.rows_in / duration, 1) if duration > 0 else 0.0,
        options=options,
    )


def _header_only_columns(source: Path, options: CleaningOptions, meta: dict[str, str]) -> list[str]:
    """Columns of an input that has a header and no row."""
    if input_format(source) == "parquet":
        return parquet_columns(source)

    with source.open("rb") as fh:
        return parse_header(fh.read(SNIFF_BYTES), meta.get("encoding", "utf-8"))
