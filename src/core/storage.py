"""Where job files live: a folder (DATA_DIR) on one host, an S3 bucket across hosts.

Paths are relative keys (`jobs/<id>/input.csv`) in both. The engine only reads
and writes local files, so the object store is met at the edges: an input (or
one byte range of it) is fetched to a scratch file, a result is written to a
scratch file and uploaded. Uploads and downloads stream in bounded parts; no
whole file is ever held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

from src.core.processes import pid_alive

if TYPE_CHECKING:
    from src.core.config import Settings

JOBS_DIR = "jobs"
PARTS_DIR = "parts"
SCRATCH_DIR = ".scratch"
COPY_CHUNK = 1 << 20
# S3 multipart part size: the most a streaming upload buffers (S3's minimum is 5 MB).
PART_BYTES = 8 << 20


class SourceError(ValueError):
    """A `source` path that is not a readable file inside the storage."""


class TooLarge(ValueError):
    """A stream longer than the limit given to `save_stream` (nothing is kept)."""


def job_prefix(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"not a job id: {job_id!r}")  # never the whole jobs/ folder
    return f"{JOBS_DIR}/{job_id}"


def input_relpath(job_id: str, suffix: str) -> str:
    return f"{job_prefix(job_id)}/input{suffix}"


def result_relpath(job_id: str, fmt: str) -> str:
    return f"{job_prefix(job_id)}/result.{fmt}"


def part_relpaths(job_id: str, index: int, fmt: str) -> tuple[str, str | None]:
    """A cleaned part of a split job: its rows, and for a CSV result its keys file."""
    stem = f"{job_prefix(job_id)}/{PARTS_DIR}/{index:05d}"
    return f"{stem}.{fmt}", (f"{stem}.keys.parquet" if fmt == "csv" else None)


def check_relpath(source: str) -> PurePosixPath:
    """A relative key with no way out: no absolute path, no '..', no backslash."""
    pure = PurePosixPath(source)
    if not source or pure.is_absolute() or "\\" in source:
        raise SourceError("source must be a relative path under DATA_DIR")
    if ".." in pure.parts:
        raise SourceError("source must not contain '..'")
    return pure


class Storage:
    """The interface both backends keep; `open_storage` picks one from the settings."""

    local: bool
    description: str

    def size(self, rel: str) -> int | None:
        """Size in bytes; None when the file does not exist."""
        raise NotImplementedError

    def fetch(self, rel: str) -> contextlib.AbstractContextManager[Path]:
        """A local file holding `rel`, for as long as the context lasts."""
        raise NotImplementedError

    def fetch_range(
        self, rel: str, start: int, end: int
    ) -> contextlib.AbstractContextManager[tuple[Path, int, int]]:
        """(local file, start, end) such that those bytes of the file are `rel`'s [start, end)."""
        raise NotImplementedError

    def publish(self, rel: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to write `rel` to (atomically); it is stored when the context ends well."""
        raise NotImplementedError

    def iter_bytes(self, rel: str, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
        raise NotImplementedError

    def save_stream(self, rel: str, stream: BinaryIO, limit: int) -> tuple[str, int]:
        """Store a stream as `rel`; (sha256, size). Past `limit`: TooLarge, nothing kept."""
        raise NotImplementedError

    def resolve_source(self, source: str) -> str:
        """The key a user-named `source` stands for; SourceError or FileNotFoundError if none."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        raise NotImplementedError

    def remove_job(self, job_id: str) -> None:
        """Every file of the job (input, parts, result)."""
        raise NotImplementedError

    def remove_parts(self, job_id: str) -> None:
        raise NotImplementedError

    def remove_partial_results(self, job_id: str) -> None:
        """Temp files a worker killed mid-write left behind (the rename never happened)."""


class _Hashing:
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

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"folder {root}"

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
        the folder's name matches what `remove_partial_results` sweeps.
        """
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            yield folder / target.name
            os.replace(folder / target.name, target)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def iter_bytes(self, rel: str, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
        with self.path(rel).open("rb") as fh:
            while data := fh.read(chunk):
                yield data

    def save_stream(self, rel: str, stream: BinaryIO, limit: int) -> tuple[str, int]:
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        reader = _Hashing(stream, limit)
        try:
            with target.open("wb") as out:
                while data := reader.read(COPY_CHUNK):
                    out.write(data)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return reader.digest.hexdigest(), reader.size

    def resolve_source(self, source: str) -> str:
        pure = check_relpath(source)
        root = self.root.resolve()
        target = (root / pure).resolve()
        if not target.is_relative_to(root):
            raise SourceError("source leaves DATA_DIR (through a symbolic link)")
        if not target.is_file():
            raise FileNotFoundError(f"source not found under DATA_DIR: {source}")
        return str(target.relative_to(root))

    def remove(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.path(job_prefix(job_id)), ignore_errors=True)

    def remove_parts(self, job_id: str) -> None:
        shutil.rmtree(self.path(f"{job_prefix(job_id)}/{PARTS_DIR}"), ignore_errors=True)

    def remove_partial_results(self, job_id: str) -> None:
        folder = self.path(job_prefix(job_id))
        for tmp in [*folder.glob(".result.*.tmp"), *folder.glob(f"{PARTS_DIR}/.*.tmp")]:
            if tmp.is_dir():  # a `publish` folder
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


class ObjectStorage(Storage):
    """An S3-compatible bucket (MinIO, AWS S3, …) through the MinIO client.

    `url` is `s3://bucket/prefix`; keys are `prefix/<rel>`. Scratch files go
    under `scratch` (DATA_DIR/.scratch: a volume, unlike a read-only container's /tmp).
    """

    local = False

    def __init__(
        self,
        url: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str,
        scratch: Path,
    ) -> None:
        from minio import Minio  # only where an object store is configured

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"STORAGE_URL must look like s3://bucket/prefix, not {url!r}")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        endpoint_parts = urlsplit(endpoint if "//" in endpoint else f"http://{endpoint}")
        self.client = Minio(
            endpoint_parts.netloc,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=endpoint_parts.scheme == "https",
            region=region or None,
        )
        self.scratch = scratch
        self.description = f"bucket {url} at {endpoint}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (compose's MinIO starts empty)."""
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def _scratch_file(self, suffix: str) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_scratch_prefix(), suffix=suffix, dir=self.scratch)
        with open(fd, "wb"):
            pass
        return Path(name)

    def size(self, rel: str) -> int | None:
        from minio.error import S3Error

        try:
            return self.client.stat_object(self.bucket, self.key(rel)).size
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
                return None
            raise

    def _download(self, rel: str, target: Path, offset: int = 0, length: int = 0) -> None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(
                self.bucket, self.key(rel), offset=offset, length=length
            )
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
                raise FileNotFoundError(f"no such object: {rel}") from None
            raise
        try:
            with target.open("wb") as out:
                for data in response.stream(COPY_CHUNK):
                    out.write(data)
        finally:
            response.close()
            response.release_conn()

    @contextlib.contextmanager
    def fetch(self, rel: str) -> Iterator[Path]:
        local = self._scratch_file(PurePosixPath(rel).suffix)
        try:
            self._download(rel, local)
            yield local
        finally:
            local.unlink(missing_ok=True)

    @contextlib.contextmanager
    def fetch_range(self, rel: str, start: int, end: int) -> Iterator[tuple[Path, int, int]]:
        local = self._scratch_file(PurePosixPath(rel).suffix)
        try:
            if end > start:
                self._download(rel, local, offset=start, length=end - start)
            yield local, 0, end - start
        finally:
            local.unlink(missing_ok=True)

    @contextlib.contextmanager
    def publish(self, rel: str) -> Iterator[Path]:
        folder = Path(tempfile.mkdtemp(prefix=_scratch_prefix(), dir=self._ensure_scratch()))
        local = folder / PurePosixPath(rel).name
        try:
            yield local
            # One PUT (or a multipart upload completed at once): readers never see half a file.
            self.client.fput_object(self.bucket, self.key(rel), str(local), part_size=PART_BYTES)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _ensure_scratch(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    def iter_bytes(self, rel: str, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
        response = self.client.get_object(self.bucket, self.key(rel))
        try:
            yield from response.stream(chunk)
        finally:
            response.close()
            response.release_conn()

    def save_stream(self, rel: str, stream: BinaryIO, limit: int) -> tuple[str, int]:
        reader = _Hashing(stream, limit)
        try:
            self.client.put_object(
                self.bucket, self.key(rel), reader, length=-1, part_size=PART_BYTES
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.remove(rel)
            raise
        return reader.digest.hexdigest(), reader.size

    def resolve_source(self, source: str) -> str:
        rel = str(check_relpath(source))
        if self.size(rel) is None:
            raise FileNotFoundError(f"source not found in the object store: {source}")
        return rel

    def remove(self, rel: str) -> None:
        self.client.remove_object(self.bucket, self.key(rel))

    def _remove_prefix(self, rel_prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        objects = self.client.list_objects(
            self.bucket, prefix=self.key(rel_prefix) + "/", recursive=True
        )
        errors = self.client.remove_objects(
            self.bucket, (DeleteObject(o.object_name) for o in objects if o.object_name)
        )
        for error in errors:  # the deletion runs as this iterates
            raise OSError(f"cannot remove {error.name}: {error.message}")

    def remove_job(self, job_id: str) -> None:
        self._remove_prefix(job_prefix(job_id))

    def remove_partial_results(self, job_id: str) -> None:
        """Scratch copies of this host's processes that died (SIGKILL skips `finally`).

        Each name carries its host and pid; a live process's copies are never touched.
        """
        host = socket.gethostname()
        for entry in self.scratch.glob(f"s3-{host}-*-*") if self.scratch.exists() else []:
            pid = entry.name.removeprefix(f"s3-{host}-").split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def remove_parts(self, job_id: str) -> None:
        self._remove_prefix(f"{job_prefix(job_id)}/{PARTS_DIR}")


def _scratch_prefix() -> str:
    return f"s3-{socket.gethostname()}-{os.getpid()}-"


def open_storage(settings: Settings) -> Storage:
    """The folder DATA_DIR, or the bucket STORAGE_URL names."""
    if not settings.storage_url:
        return LocalStorage(settings.data_dir)
    return ObjectStorage(
        settings.storage_url,
        settings.s3_endpoint_url,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_region,
        settings.data_dir / SCRATCH_DIR,
    )
