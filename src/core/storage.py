"""Where job files live: a folder (DATA_DIR) on one host, an S3 bucket across hosts.

`Storage` is what both backends keep: blob operations on relative keys
(`jobs/<id>/input.csv`), nothing about jobs. `LocalStorage` is here;
`ObjectStorage` is in `src.core.object_storage`. No whole file is ever held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from src.core.config import Settings

SCRATCH_DIR = ".scratch"
COPY_CHUNK = 1 << 20


class TooLarge(ValueError):
    """A stream longer than the limit given to `save_stream` (nothing is kept)."""


class StorageUnavailable(Exception):
    """The object store cannot be reached (refused, unknown host, timed out, 5xx) after the
    client's retries: nothing was stored; retry later.

    Not an OSError: callers that treat an OSError as a bad file must not take an outage
    for one.
    """


class OutsideStore(ValueError):
    """A key that leads out of the store (a symbolic link pointing elsewhere)."""


class Storage(Protocol):
    """Blob operations both backends keep; `open_storage` picks one from the settings.

    Keys are relative POSIX paths; which keys a job has is the job layout's business.
    """

    description: str  # for logs: which folder or bucket
    where: str  # for users: "under DATA_DIR", "in the object store"

    def prepare(self) -> None:
        """Make the store usable (create the bucket); raises while it is unreachable."""

    def size(self, key: str) -> int | None:
        """Size in bytes; None when there is no such file."""

    def resolve(self, key: str) -> str:
        """The stored key `key` names (links followed): FileNotFoundError, OutsideStore."""

    def uri(self, key: str) -> str:
        """Where the file lives, for lineage records: an absolute path or `s3://bucket/key`."""

    def fetch(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local file holding `key`, for as long as the context lasts."""

    def fetch_range(
        self, key: str, start: int, end: int
    ) -> contextlib.AbstractContextManager[tuple[Path, int, int]]:
        """(local file, start, end) such that those bytes of the file are `key`'s [start, end)."""

    def publish(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to write `key` to; stored whole when the context ends without error."""

    def local_path(self, key: str) -> Path | None:
        """The file itself when it is on this host (served with sendfile), else None."""

    def iter_bytes(self, key: str, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
        """The stored bytes, a chunk at a time."""

    def save_stream(self, key: str, stream: BinaryIO, limit: int) -> tuple[str, int]:
        """Store a stream as `key`; (sha256, size). Past `limit`: TooLarge, nothing kept."""

    def remove(self, key: str) -> None:
        """One file; no error if it is absent."""

    def remove_tree(self, prefix: str) -> None:
        """Every file under `prefix/`; no error if there is none."""

    def discard_partial(self, prefix: str) -> None:
        """Unfinished writes under `prefix/` that a killed writer left (its rename never ran)."""

    def discard_dead_scratch(self) -> None:
        """Local scratch copies of this host's processes that died (SIGKILL skips cleanup)."""


class Hashing:
    """Reads from a stream, hashing and counting, and refuses past a limit."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.limit = stream, limit
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n if n and n > 0 else COPY_CHUNK)
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge(f"more than {self.limit:,} bytes")
        self.digest.update(data)
        return data


class LocalStorage(Storage):
    """Files under DATA_DIR: one host, or several sharing a volume."""

    where = "under DATA_DIR"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"folder {root}"

    def prepare(self) -> None:
        """Nothing to create: folders are made as files are written."""

    def path(self, rel: str) -> Path:
        return self.root / rel

    def size(self, rel: str) -> int | None:
        try:
            return self.path(rel).stat().st_size
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def fetch(self, rel: str) -> Iterator[Path]:
        yield self.path(rel)

    @contextlib.contextmanager
    def fetch_range(self, rel: str, start: int, end: int) -> Iterator[tuple[Path, int, int]]:
        yield self.path(rel), start, end

    @contextlib.contextmanager
    def publish(self, rel: str) -> Iterator[Path]:
        """The same name in a temp folder beside the target, renamed over it on success.

        So an exception in the block (or a killed worker) never leaves a file at `rel`;
        the folder's name matches what `discard_partial` sweeps.
        """
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            yield folder / target.name
            os.replace(folder / target.name, target)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def local_path(self, rel: str) -> Path:
        return self.path(rel)

    def iter_bytes(self, rel: str, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
        with self.path(rel).open("rb") as fh:
            while data := fh.read(chunk):
                yield data

    def save_stream(self, rel: str, stream: BinaryIO, limit: int) -> tuple[str, int]:
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        reader = Hashing(stream, limit)
        try:
            with target.open("wb") as out:
                while data := reader.read(COPY_CHUNK):
                    out.write(data)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return reader.digest.hexdigest(), reader.size

    def resolve(self, rel: str) -> str:
        root = self.root.resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise OutsideStore("leaves DATA_DIR (through a symbolic link)")
        if not target.is_file():
            raise FileNotFoundError(f"not found {self.where}: {rel}")
        return str(target.relative_to(root))

    def uri(self, rel: str) -> str:
        return str(self.path(rel).resolve())

    def remove(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def remove_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def discard_partial(self, prefix: str) -> None:
        folder = self.path(prefix)
        for tmp in folder.rglob(".*.tmp") if folder.is_dir() else []:
            if tmp.is_dir():  # a `publish` folder
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    def discard_dead_scratch(self) -> None:
        """Nothing: local files are written in place, no scratch copies."""


def open_storage(settings: Settings) -> Storage:
    """The folder DATA_DIR, or the bucket STORAGE_URL names."""
    if not settings.storage_url:
        return LocalStorage(settings.data_dir)
    from src.core.object_storage import ObjectStorage  # the MinIO client only where needed

    return ObjectStorage(
        settings.storage_url,
        settings.s3_endpoint_url,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_region,
        settings.data_dir / SCRATCH_DIR,
    )
