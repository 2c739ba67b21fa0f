"""Streaming input: files of any size (CSV, Parquet, JSON Lines) read in chunks, with
errors a user can act on. Writing is `src.data.writer`'s."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from src.data.options import CleaningOptions

# pyarrow reads CSV in blocks of this size; a single row longer than this is refused.
# Small blocks keep the peak memory low (and cost no speed); product rows are far smaller.
BLOCK_BYTES = 2 << 20
SNIFF_BYTES = 1 << 20
# Product data has a handful of columns; thousands cost seconds per chunk for nothing.
MAX_COLUMNS = 1024


class InputError(ValueError):
    """Bad input, explained in one line a user can act on."""


def check_input_file(path: Path) -> int:
    """The file's size; a missing, unreadable or empty file is an InputError."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if not path.is_file():
        raise InputError(f"not a file: {path}")
    if size == 0:
        raise InputError(f"input is empty (0 bytes): {path}")
    return size


def detect_encoding(head: bytes, choice: str) -> str:
    """The encoding to read with: UTF-8 when the head decodes as UTF-8, else cp1252."""
    if choice != "auto":
        return "utf-8" if choice == "utf-8" else choice
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=len(head) < SNIFF_BYTES)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def parse_header(head: bytes, encoding: str) -> list[str]:
    """Column names from the first record (RFC 4180 quoting, BOM removed)."""
    text = head.decode("utf-8-sig" if encoding == "utf-8" else encoding, errors="replace")
    try:
        header = next(csv.reader(io.StringIO(text, newline="")))
    except (StopIteration, csv.Error):
        raise InputError("input has no CSV header line") from None
    return header


def require_columns(columns: list[str], options: CleaningOptions) -> None:
    """The header must name the text columns, once each, within MAX_COLUMNS."""
    missing = [c for c in options.text_columns if c not in columns]
    if missing:
        shown = ", ".join(columns[:10]) + (" …" if len(columns) > 10 else "")
        raise InputError(
            f"missing expected column(s): {', '.join(missing)} (header has: {shown or 'nothing'})"
        )
    if len(columns) > MAX_COLUMNS:
        raise InputError(f"too many columns: {len(columns):,} (limit {MAX_COLUMNS:,})")
    repeated = sorted(name for name, n in Counter(columns).items() if n > 1)
    if repeated:
        raise InputError(f"duplicated column names in header: {', '.join(map(repr, repeated))}")


_ARROW_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+): ?(.*)", re.S)


def explain_arrow_error(exc: Exception, encoding: str) -> InputError:
    """Turn pyarrow's CSV errors into one line that names the problem."""
    msg = str(exc)
    if m := _ARROW_RAGGED.search(msg):
        row = m.group(3).splitlines()[0][:60] if m.group(3) else ""
        return InputError(
            f"ragged row: expected {m.group(1)} fields, got {m.group(2)} (row begins {row!r}); "
            "a quoted field may be unterminated"
        )
    if "invalid UTF8" in msg:
        return InputError(
            f"input is not valid {encoding} text; if it is a Windows file, "
            "use encoding 'cp1252' (clean-data --encoding cp1252)"
        )
    if "straddling" in msg or "block size" in msg:
        return InputError(f"a row is longer than the {BLOCK_BYTES >> 20} MB limit")
    if "Empty CSV" in msg:
        return InputError("input has no CSV header line")
    return InputError(f"unreadable CSV: {msg.splitlines()[0][:200]}")


def csv_head(head: bytes, options: CleaningOptions) -> tuple[list[str], str]:
    """(header, encoding) from the first bytes of a CSV file; an InputError if unusable."""
    if (nul := head.find(b"\x00")) >= 0:
        raise InputError(f"input looks binary (NUL byte at offset {nul}), not a CSV file")
    encoding = detect_encoding(head, options.encoding)
    header = parse_header(head, encoding)
    require_columns(header, options)
    return header, encoding


def iter_csv(
    path: Path, options: CleaningOptions, meta: dict[str, str]
) -> Iterator[tuple[pl.DataFrame, int]]:
    """Chunks of at most `options.chunk_rows` rows (all columns as text) and bytes read so far."""
    with path.open("rb") as raw:
        header, encoding = csv_head(raw.read(SNIFF_BYTES), options)
    meta["encoding"] = encoding
    # A native file, not a Python one: pyarrow's read-ahead thread must never call
    # back into Python (at interpreter exit that aborts the process).
    source = pa.OSFile(str(path), "rb")
    try:
        yield from _arrow_chunks(source, header, encoding, options, named=False)
    finally:
        source.close()


def iter_csv_range(
    path: Path, start: int, end: int, header: list[str], encoding: str, options: CleaningOptions
) -> Iterator[tuple[pl.DataFrame, int]]:
    """`iter_csv` over bytes [start, end) of the file: whole records, no header line.

    Bytes done count from `start`. The range is memory-mapped, never copied.
    """
    mapped = pa.memory_map(str(path), "r")
    try:
        source = pa.BufferReader(mapped.read_at(end - start, start))
        yield from _arrow_chunks(source, header, encoding, options, named=True)
    finally:
        mapped.close()


def _arrow_chunks(
    source: Any, header: list[str], encoding: str, options: CleaningOptions, *, named: bool
) -> Iterator[tuple[pl.DataFrame, int]]:
    """pyarrow's streaming CSV reader over a native stream; `named`: no header line in it."""
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(
                block_size=BLOCK_BYTES,
                encoding="utf8" if encoding == "utf-8" else encoding,
                use_threads=False,
                column_names=header if named else None,
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        try:
            for batch in reader:
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                frame.columns = header  # polars renames the unnamed index column
                done = source.tell()
                for start in range(0, frame.height, options.chunk_rows):
                    yield frame.slice(start, options.chunk_rows), done
        finally:
            reader.close()
    except pa.ArrowInvalid as exc:
        raise explain_arrow_error(exc, encoding) from None


def iter_parquet(
    path: Path, options: CleaningOptions, meta: dict[str, str]
) -> Iterator[tuple[pl.DataFrame, int]]:
    import pyarrow.parquet as pq  # only for Parquet: a CSV run never loads it

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"not a readable Parquet file: {str(exc).splitlines()[0][:200]}") from None
    require_columns(pf.schema_arrow.names, options)
    meta["encoding"] = "utf-8"
    total = pf.metadata.num_rows or 1
    size = path.stat().st_size
    done = 0
    for batch in pf.iter_batches(batch_size=options.chunk_rows):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        done += frame.height
        yield frame, size * done // total


def iter_jsonl(
    path: Path, options: CleaningOptions, meta: dict[str, str]
) -> Iterator[tuple[pl.DataFrame, int]]:
    """JSON Lines, one object a row, read in chunks; every value becomes text."""
    import pandas as pd  # only JSON Lines needs it

    meta["encoding"] = "utf-8"
    size = path.stat().st_size
    try:
        with path.open("rb") as raw:
            reader = pd.read_json(raw, lines=True, chunksize=options.chunk_rows, dtype=False)
            for number, chunk in enumerate(reader):
                columns = [str(c) for c in chunk.columns]
                if number == 0:
                    require_columns(columns, options)
                frame = pl.DataFrame(
                    {
                        name: [None if v is None or v != v else str(v) for v in chunk[col]]
                        for name, col in zip(columns, chunk.columns, strict=True)
                    },
                    schema=dict.fromkeys(columns, pl.String),
                )
                yield frame.fill_null(""), min(raw.tell(), size)
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"not valid JSON Lines: {str(exc).splitlines()[0][:200]}") from None
