"""Streaming input: files of any size (CSV, Parquet, JSON Lines) read in chunks, with
errors a user can act on. Writing is `src.data.writer`'s.

Polars alone (no pyarrow, pandas or numpy: the worker image's budget, issue 15). Why the
CSV block cutting is written here: polars parses a block of whole records fast, but has
no streaming reader that keeps memory bounded on any input, transcodes cp1252, and
refuses ragged rows and stray quotes with a message naming the row; so blocks are cut
at record ends here (RFC 4180 quote parity), parsed by polars, and the rare block it
cannot take is read by Python's csv module, which names the problem
(`src.data.csv_blocks`)."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from src.data.csv_blocks import Limited, csv_chunks
from src.data.errors import InputError
from src.data.options import CleaningOptions

SNIFF_BYTES = 1 << 20
# Product data has a handful of columns; thousands cost seconds per chunk for nothing.
MAX_COLUMNS = 1024


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
        head = raw.read(SNIFF_BYTES)
        header, encoding = csv_head(head, options)
        meta["encoding"] = encoding
        start = _header_end(head, more=raw.read(1) != b"")
        raw.seek(start)
        for frame, done in csv_chunks(raw, header, encoding, options):
            yield frame, start + done


def iter_csv_range(
    path: Path, start: int, end: int, header: list[str], encoding: str, options: CleaningOptions
) -> Iterator[tuple[pl.DataFrame, int]]:
    """`iter_csv` over bytes [start, end) of the file: whole records, no header line.

    Bytes done count from `start`. The range is read block by block, never copied whole.
    """
    with path.open("rb") as raw:
        raw.seek(start)
        yield from csv_chunks(Limited(raw, end - start), header, encoding, options)


def _header_end(head: bytes, *, more: bool) -> int:
    """Where the rows start: after the first line feed outside quotes."""
    pos = head.find(b"\n")
    while pos >= 0:
        if head.count(b'"', 0, pos) % 2 == 0:
            return pos + 1
        pos = head.find(b"\n", pos + 1)
    if more:
        raise InputError(f"the CSV header line is longer than {SNIFF_BYTES >> 20} MB")
    return len(head)


def iter_parquet(
    path: Path, options: CleaningOptions, meta: dict[str, str]
) -> Iterator[tuple[pl.DataFrame, int]]:
    """Batches of `options.chunk_rows` rows from polars' streaming Parquet reader."""
    try:
        columns = list(pl.read_parquet_schema(path))
        total = pl.scan_parquet(path).select(pl.len()).collect().item() or 1
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise not_parquet(exc) from None
    require_columns(columns, options)
    meta["encoding"] = "utf-8"
    size = path.stat().st_size
    done = 0
    batches = pl.scan_parquet(path).collect_batches(chunk_size=options.chunk_rows)
    while True:
        try:
            frame = next(batches)
        except StopIteration:
            return
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise not_parquet(exc) from None
        done += frame.height
        yield frame, size * done // total


def not_parquet(exc: Exception) -> InputError:
    return InputError(f"not a readable Parquet file: {str(exc).splitlines()[0][:200]}")


def parquet_columns(path: Path) -> list[str]:
    """The column names of a Parquet file, from its footer."""
    try:
        return list(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise not_parquet(exc) from None


def iter_jsonl(
    path: Path, options: CleaningOptions, meta: dict[str, str]
) -> Iterator[tuple[pl.DataFrame, int]]:
    """JSON Lines, one object a row, read in chunks; every value becomes text.

    The columns are the keys of the first chunk's objects, in order of first use;
    a key missing from an object is "", a key first seen in a later chunk is an error
    (its column could no longer be added to the output).
    """
    meta["encoding"] = "utf-8"
    columns: list[str] | None = None
    rows: list[dict[str, Any]] = []
    with path.open("rb") as raw:
        for number, line in enumerate(raw, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise InputError(f"not valid JSON Lines: line {number}: {exc}") from None
            if not isinstance(value, dict):
                raise InputError(
                    f"not valid JSON Lines: line {number} is a JSON {type(value).__name__}, "
                    "not an object"
                )
            if columns is not None and not value.keys() <= set(columns):
                extra = next(k for k in value if k not in columns)
                raise InputError(
                    f"not valid JSON Lines: line {number} has the key {extra!r}, absent from "
                    f"the first {options.chunk_rows:,} objects (put every key in the first line)"
                )
            rows.append(value)
            if len(rows) == options.chunk_rows:
                columns = columns or _json_columns(rows, options)
                yield _json_frame(rows, columns), raw.tell()
                rows = []
        if rows or columns is None:
            columns = columns or _json_columns(rows, options)
            yield _json_frame(rows, columns), raw.tell()


def _json_columns(rows: list[dict[str, Any]], options: CleaningOptions) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    require_columns(columns, options)
    return columns


def _json_frame(rows: list[dict[str, Any]], columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {name: [_json_text(row.get(name)) for row in rows] for name in columns},
        schema=dict.fromkeys(columns, pl.String),
    )


def _json_text(value: Any) -> str:
    """A JSON value as text: null is "", strings as they are, anything else as Python
    prints it (1.5, True, {'k': [1]}), as earlier versions did."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)
