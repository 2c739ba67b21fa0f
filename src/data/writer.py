"""Atomic output: a result is written in chunks to a hidden temporary file and renamed
into place on success only."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import polars as pl

from src.data.formats import OutputFormat

# Parquet chunks are gathered to about this size before they go to a part file.
PARQUET_PART_BYTES = 16 << 20


class AtomicWriter:
    """Writes chunks to a hidden temporary file renamed into place on success only.

    A failed or cancelled run leaves nothing behind: readers never see a
    half-written result. Polars has no incremental Parquet writer, so Parquet
    chunks go to hidden part files that one streaming `sink_parquet` joins at
    `commit`; memory stays bounded by a part, whatever the output's size.
    """

    def __init__(
        self, path: Path, fmt: OutputFormat, *, header: bool = True, durable: bool = True
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.header = header
        self.durable = durable  # fsync before the rename (not for intermediate files)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self._fh: BinaryIO | None = None
        self._schema: pl.Schema | None = None  # Parquet: the first chunk's, kept by all
        self._pending: list[pl.DataFrame] = []
        self._pending_bytes = 0
        self._parts: list[Path] = []
        self._columns: list[str] | None = None

    def write(self, frame: pl.DataFrame) -> None:
        if self.fmt == "parquet":
            if self._schema is None:
                self._schema = frame.schema
            self._pending.append(frame.cast(self._schema))
            self._pending_bytes += int(frame.estimated_size())
            if self._pending_bytes >= PARQUET_PART_BYTES:
                self._flush_part()
        else:
            if self._fh is None:
                self._fh = self.tmp.open("wb")
                frame.write_csv(self._fh, include_header=self.header)
            else:
                frame.write_csv(self._fh, include_header=False)
        self._columns = frame.columns

    def _flush_part(self) -> None:
        """The pending Parquet chunks into one more hidden part file."""
        fd, name = tempfile.mkstemp(
            prefix=f"{self.tmp.name}.", suffix=".part", dir=self.path.parent
        )
        os.close(fd)
        part = Path(name)
        self._parts.append(part)
        pl.concat(self._pending, rechunk=False).write_parquet(part, compression="uncompressed")
        self._pending, self._pending_bytes = [], 0

    def _csv_file(self) -> BinaryIO:
        if self.fmt != "csv" or (self._fh is None and self.header):
            raise ValueError("CSV bytes go after the header: write a frame first")
        if self._fh is None:
            self._fh = self.tmp.open("wb")
        return self._fh

    def write_csv_bytes(self, data: bytes | memoryview) -> None:
        """Rows already in CSV form (a split job's parts)."""
        self._csv_file().write(data)

    def copy_csv_file(self, source: Path) -> None:
        """`write_csv_bytes` of a whole file, copied by the kernel where it can."""
        out = self._csv_file()
        out.flush()
        start = out.tell()
        with source.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            copy_into(fh.fileno(), out.fileno(), size, start)
        out.seek(start + size)

    def commit(self, columns: list[str]) -> None:
        """Finish the file (a header-only one if no row came) and move it into place."""
        if self._columns is None:
            self.write(pl.DataFrame({c: pl.Series(c, [], dtype=pl.String) for c in columns}))
        try:
            if self.fmt == "parquet":
                self._write_parquet()
        finally:
            self._remove_parts()
        if self._fh is not None:
            self._fh.flush()
            if self.durable:
                os.fsync(self._fh.fileno())
            self._fh.close()
        self.tmp.chmod(0o644)
        os.replace(self.tmp, self.path)

    def _write_parquet(self) -> None:
        if self._pending and not self._parts:  # one part's worth: no round trip
            pl.concat(self._pending, rechunk=False).write_parquet(self.tmp)
        else:
            if self._pending:
                self._flush_part()
            pl.scan_parquet(self._parts).sink_parquet(self.tmp)
        self._pending = []
        if self.durable:
            with self.tmp.open("rb") as fh:
                os.fsync(fh.fileno())

    def _remove_parts(self) -> None:
        for part in self._parts:
            part.unlink(missing_ok=True)
        self._parts = []

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._fh is not None:
                self._fh.close()
        self._pending = []
        self._remove_parts()
        self.tmp.unlink(missing_ok=True)


def copy_into(source: int, target: int, size: int, offset: int) -> None:
    """Bytes [0, size) of file `source` into file `target` at `offset`, by the kernel where
    it can. Positional: neither file's own position moves, so a writer that lost its claim
    on a file and still writes puts the same bytes at the same place."""
    done = 0
    with contextlib.suppress(OSError):  # another file system, an old kernel: via userspace
        while done < size:
            n = os.copy_file_range(source, target, size - done, done, offset + done)
            if n == 0:
                break
            done += n
    while done < size:
        chunk = os.pread(source, min(size - done, 1 << 20), done)
        if not chunk:
            raise RuntimeError("a file shrank while it was copied")
        done += os.pwrite(target, chunk, offset + done)
