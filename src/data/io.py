"""Streaming input: files of any size (CSV, Parquet, JSON Lines) read in chunks, with
errors a user can act on. Writing is `src.data.writer`'s.

Polars alone (no pyarrow, pandas or numpy: the worker image's budget, issue 15). Why the
CSV block cutting is written here: polars parses a block of whole records fast, but has
no streaming reader that keeps memory bounded on any input, transcodes cp1252, and
refuses ragged rows and stray quotes with a message naming the row; so blocks are cut
at record ends here (RFC 4180 quote parity), parsed by polars, and the rare block it
cannot take is read by Python's csv module, which names the problem."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl

from src.data.options import CleaningOptions

# CSV is read in blocks of this size; a single row longer than this is refused.
# Small blocks keep the peak memory low (and cost no speed); product rows are far smaller.
BLOCK_BYTES = 2 << 20
SNIFF_BYTES = 1 << 20
# Product data has a handful of columns; thousands cost seconds per chunk for nothing.
MAX_COLUMNS = 1024

# A block whose every quote is RFC 4180 quoting: a quoted field opens at the start of a
# field, holds only doubled quotes, and closes at its end. Only then do a block's quote
# counts tell where its records end, and polars parses it as the lenient reader would.
_WELL_QUOTED = re.compile(rb'(?:[^"]++|(?<![^,\n])"(?:[^"]++|"")*+"(?![^,\r\n]))*+')
_BARE_CR = re.compile(rb"\r(?!\n)")
_LIMIT_HINT = "; a quoted field may be unterminated"


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


def csv_head(head: bytes, options: CleaningOptions) -> tuple[list[str], str]:
    """(header, encoding) from the first bytes of a CSV file; an InputError if unusable."""
    if (nul := head.find(b"\x00")) >= 0:
        raise InputError(f"input looks binary (NUL byte at offset {nul}), not a CSV file")
    encoding = detect_encoding(head, options.encoding)
    header = parse_header(head, encoding)
    require_columns(header, options)
    return header, encoding


def not_valid_text(encoding: str) -> InputError:
    if encoding != "utf-8":  # cp1252 leaves five bytes undefined; latin-1 takes any byte
        return InputError(
            f"input is not valid {encoding} text; "
            "use encoding 'latin-1' (clean-data --encoding latin-1)"
        )
    return InputError(
        f"input is not valid {encoding} text; if it is a Windows file, "
        "use encoding 'cp1252' (clean-data --encoding cp1252)"
    )


def ragged_row(expected: int, fields: list[str]) -> InputError:
    begins = ",".join(fields).splitlines()[0][:60] if any(fields) else ""
    return InputError(
        f"ragged row: expected {expected} fields, got {len(fields)} (row begins {begins!r})"
        + _LIMIT_HINT
    )


def row_too_long(hint: str = "") -> InputError:
    return InputError(f"a row is longer than the {BLOCK_BYTES >> 20} MB limit{hint}")


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
        for frame, done in _csv_chunks(raw, header, encoding, options):
            yield frame, start + done


def iter_csv_range(
    path: Path, start: int, end: int, header: list[str], encoding: str, options: CleaningOptions
) -> Iterator[tuple[pl.DataFrame, int]]:
    """`iter_csv` over bytes [start, end) of the file: whole records, no header line.

    Bytes done count from `start`. The range is read block by block, never copied whole.
    """
    with path.open("rb") as raw:
        raw.seek(start)
        yield from _csv_chunks(_Limited(raw, end - start), header, encoding, options)


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


class _Limited(io.RawIOBase):
    """At most `size` bytes of a stream (a split part's byte range)."""

    def __init__(self, raw: BinaryIO, size: int) -> None:
        self._raw, self._left = raw, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        n = self._raw.readinto(view) or 0  # type: ignore[attr-defined]
        self._left -= n
        return n


class _Prefixed(io.RawIOBase):
    """`prefix` then the rest of `raw`, counting the bytes handed out."""

    def __init__(self, prefix: bytes, raw: Any) -> None:
        self._prefix, self._raw, self.consumed = memoryview(prefix), raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
        else:
            n = (self._raw.readinto(buffer) or 0) if self._raw is not None else 0
        self.consumed += n
        return n


def _csv_chunks(
    raw: Any, header: list[str], encoding: str, options: CleaningOptions
) -> Iterator[tuple[pl.DataFrame, int]]:
    """Records of `raw` (no header line) in chunks, with the bytes read so far.

    Blocks of BLOCK_BYTES are cut after their last line feed outside quotes (an even
    count of quotes before it, RFC 4180) and parsed by polars. A block polars cannot
    take as is (blank lines, bare CR line ends, ragged rows) is read by Python's csv
    module; once quotes are misplaced (a stray `"`), quote counts no longer find where
    records end, so the csv module reads the rest of the input.
    """
    schema = dict.fromkeys(header, pl.String)
    carry = b""
    done = 0
    while True:
        block = raw.read(BLOCK_BYTES)
        done += len(block)
        data = carry + block if carry else block
        if not block:
            body, carry = data, b""
        else:
            cut = _records_end(data)
            body, carry = data[:cut], data[cut:]
            if not body:
                if len(carry) > BLOCK_BYTES:
                    if _WELL_QUOTED.match(carry).end() < len(carry):  # type: ignore[union-attr]
                        lenient = _Prefixed(carry, raw)
                        yield from _lenient_chunks(
                            lenient, done - len(carry), header, encoding, options
                        )
                        return
                    raise row_too_long()
                continue
        if not body:
            return
        if _WELL_QUOTED.match(body).end() < len(body):  # type: ignore[union-attr]
            lenient = _Prefixed(data, raw)
            yield from _lenient_chunks(lenient, done - len(data), header, encoding, options)
            return
        frame = _parse_block(body, schema, encoding)
        if frame is None:
            chunks = _lenient_chunks(_Prefixed(body, None), 0, header, encoding, options)
            for chunk, _ in chunks:
                yield chunk, done - len(carry)
            continue
        for start in range(0, frame.height, options.chunk_rows):
            yield frame.slice(start, options.chunk_rows), done - len(carry)
        if not block:
            return


def _records_end(data: bytes) -> int:
    """The end of the last whole record in `data` (0: none): its last line feed with an
    even count of quotes before it. Walks back quote by quote (the parity only changes
    there), so a long quoted field with many line feeds costs no more than a short one."""
    odd = data.count(b'"') % 2 == 1  # parity after the last quote
    end = len(data)
    while True:
        quote = data.rfind(b'"', 0, end)
        if not odd and (lf := data.rfind(b"\n", quote + 1, end)) >= 0:
            return lf + 1
        if quote < 0:
            return 0
        end, odd = quote, not odd


def _parse_block(body: bytes, schema: dict[str, Any], encoding: str) -> pl.DataFrame | None:
    """Whole well-quoted records parsed by polars; None when the csv module must read them."""
    if encoding != "utf-8":
        try:
            body = body.decode(encoding).encode("utf-8")
        except UnicodeDecodeError:
            raise not_valid_text(encoding) from None
    if b"\r" in body and _BARE_CR.search(body):
        return None  # old Mac line ends
    if len(schema) == 1 and (b"\n\n" in body or b"\n\r\n" in body or body[:1] in b"\r\n"):
        return None  # blank lines (skipped); with more columns the separators tell
    try:
        frame = pl.read_csv(
            body, has_header=False, schema=schema, quote_char='"', empty_string_is_null=False
        )
    except pl.exceptions.PolarsError as exc:
        if "utf-8" in str(exc).lower() or "utf8" in str(exc).lower():
            raise not_valid_text(encoding) from None
        return None  # a row with too many fields (or other trouble): the csv module names it
    # polars fills a short row's missing fields (and a blank line's) with "": every
    # row must have had exactly len(schema) - 1 separators, outside the values.
    in_values = sum(frame.select(pl.all().str.count_matches(",", literal=True).sum()).row(0))
    if body.count(b",") - in_values != frame.height * (len(schema) - 1):
        return None
    return frame


def _lenient_chunks(
    raw: _Prefixed, start: int, header: list[str], encoding: str, options: CleaningOptions
) -> Iterator[tuple[pl.DataFrame, int]]:
    """Python's csv module over the rest of the input: stray quotes stay text, as in any
    spreadsheet; blank lines are skipped; a ragged row is an InputError."""
    csv.field_size_limit(max(csv.field_size_limit(), BLOCK_BYTES + 1))
    text = io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, newline="")
    width = len(header)
    rows: list[list[str]] = []
    try:
        for row in csv.reader(text):
            if not row:
                continue
            if len(row) != width:
                raise ragged_row(width, row)
            if sum(map(len, row)) > BLOCK_BYTES:
                raise row_too_long(_LIMIT_HINT)
            rows.append(row)
            if len(rows) == options.chunk_rows:
                yield _frame(header, rows), start + raw.consumed
                rows = []
    except UnicodeDecodeError:
        raise not_valid_text(encoding) from None
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise row_too_long(_LIMIT_HINT) from None
        raise InputError(f"unreadable CSV: {str(exc)[:200]}") from None
    if rows:
        yield _frame(header, rows), start + raw.consumed


def _frame(header: list[str], rows: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            name: pl.Series(name, column, dtype=pl.String)
            for name, column in zip(header, zip(*rows, strict=True), strict=True)
        }
    )


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
