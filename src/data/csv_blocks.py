"""CSV records in blocks: cut at record ends, parsed by polars, the rare block it
cannot take read by Python's csv module (why this is ours: `src.data.io`).

Memory stays bounded on any input (one block in flight); ragged rows and stray quotes
are InputErrors naming the row, as with any spreadsheet.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import polars as pl

from src.data.errors import LIMIT_HINT, InputError, not_valid_text, ragged_row
from src.data.options import CleaningOptions

# CSV is read in blocks of this size; a single row longer than this is refused.
# Small blocks keep the peak memory low (and cost no speed); product rows are far smaller.
BLOCK_BYTES = 2 << 20

# A block whose every quote is RFC 4180 quoting: a quoted field opens at the start of a
# field, holds only doubled quotes, and closes at its end. Only then do a block's quote
# counts tell where its records end, and polars parses it as the lenient reader would.
_WELL_QUOTED = re.compile(rb'(?:[^"]++|(?<![^,\n])"(?:[^"]++|"")*+"(?![^,\r\n]))*+')
_BARE_CR = re.compile(rb"\r(?!\n)")


def row_too_long(hint: str = "") -> InputError:
    return InputError(f"a row is longer than the {BLOCK_BYTES >> 20} MB limit{hint}")


class Limited(io.RawIOBase):
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


def csv_chunks(
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
                raise row_too_long(LIMIT_HINT)
            rows.append(row)
            if len(rows) == options.chunk_rows:
                yield _frame(header, rows), start + raw.consumed
                rows = []
    except UnicodeDecodeError:
        raise not_valid_text(encoding) from None
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise row_too_long(LIMIT_HINT) from None
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
