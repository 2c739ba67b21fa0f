"""Job files in an S3-compatible bucket (MinIO, AWS S3, …) through the MinIO client.

The engine only reads and writes local files, so the bucket is met at the edges: an
input (or one byte range of it) is fetched to a scratch file, a result is written
to a scratch file and uploaded in one go. Transfers stream in bounded chunks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, cast
from urllib.parse import urlsplit

from src.core.processes import pid_alive
from src.core.storage import COPY_CHUNK, Hashing, Storage, StorageUnavailable

if TYPE_CHECKING:
    from urllib3 import PoolManager

# S3 multipart upload chunk: the most a streaming upload buffers (S3's minimum is 5 MB).
UPLOAD_CHUNK = 8 << 20
NO_SUCH_OBJECT = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})
# The MinIO client's own settings, but for the connect timeout: its five minutes, times its
# six tries, would hold a request for half an hour when the store's host does not answer.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 300.0


@contextlib.contextmanager
def _reachable(what: str) -> Iterator[None]:
    """Turn the MinIO client's transport failures and server errors into StorageUnavailable."""
    from minio.error import S3Error, ServerError
    from urllib3.exceptions import HTTPError

    try:
        yield
    except (HTTPError, ServerError) as exc:
        raise StorageUnavailable(f"object store unreachable ({what}): {exc}") from exc
    except S3Error as exc:
        if getattr(exc.response, "status", 0) < 500:
            raise  # an answer about the request (no such key, access denied): not an outage
        raise StorageUnavailable(f"object store unavailable ({what}): {exc.code}") from exc


def _http_client() -> PoolManager:
    """The pool the MinIO client would make, with a connect timeout that fails fast."""
    import certifi
    from urllib3 import PoolManager, Retry, Timeout

    return PoolManager(
        timeout=Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class ObjectStorage(Storage):
    """An S3-compatible bucket (MinIO, AWS S3, …) through the MinIO client.

    `url` is `s3://bucket/prefix`; keys are `prefix/<rel>`. Scratch files go
    under `scratch` (DATA_DIR/.scratch: a volume, unlike a read-only container's /tmp).
    """

    where = "in the object store"

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
            http_client=_http_client(),
        )
        self.scratch = scratch
        self.description = f"bucket {url} at {endpoint}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def prepare(self) -> None:
        """Create the bucket if missing (compose's MinIO starts empty)."""
        with _reachable("bucket"):
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
            with _reachable("stat"):
                return self.client.stat_object(self.bucket, self.key(rel)).size
        except S3Error as exc:
            if exc.code in NO_SUCH_OBJECT:
                return None
            raise

    def _download(self, rel: str, target: Path, offset: int = 0, length: int = 0) -> None:
        from minio.error import S3Error

        try:
            with _reachable("download"):
                response = self.client.get_object(
                    self.bucket, self.key(rel), offset=offset, length=length
                )
        except S3Error as exc:
            if exc.code in NO_SUCH_OBJECT:
                raise FileNotFoundError(f"no such object: {rel}") from None
            raise
        try:
            with target.open("wb") as out, _reachable("download"):
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
            with _reachable("upload"):
                self.client.fput_object(
                    self.bucket, self.key(rel), str(local), part_size=UPLOAD_CHUNK
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _ensure_scratch(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    def local_path(self, rel: str) -> None:
        return None

    def iter_bytes(self, rel: str, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
        with _reachable("download"):
            response = self.client.get_object(self.bucket, self.key(rel))
        try:
            with _reachable("download"):
                yield from response.stream(chunk)
        finally:
            response.close()
            response.release_conn()

    def save_stream(self, rel: str, stream: BinaryIO, limit: int) -> tuple[str, int]:
        reader = Hashing(stream, limit)
        try:
            with _reachable("upload"):
                self.client.put_object(
                    self.bucket,
                    self.key(rel),
                    cast(BinaryIO, reader),
                    length=-1,
                    part_size=UPLOAD_CHUNK,
                )
        except StorageUnavailable:
            raise  # nothing reached the store; a removal would only wait on it again
        except BaseException:
            with contextlib.suppress(Exception):
                self.remove(rel)
            raise
        return reader.digest.hexdigest(), reader.size

    def resolve(self, rel: str) -> str:
        if self.size(rel) is None:
            raise FileNotFoundError(f"not found {self.where}: {rel}")
        return rel

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    def remove(self, rel: str) -> None:
        with _reachable("remove"):
            self.client.remove_object(self.bucket, self.key(rel))

    def remove_tree(self, rel_prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        objects = self.client.list_objects(
            self.bucket, prefix=self.key(rel_prefix) + "/", recursive=True
        )
        errors = self.client.remove_objects(
            self.bucket, (DeleteObject(o.object_name) for o in objects if o.object_name)
        )
        with _reachable("remove"):
            for error in errors:  # the listing and the deletion run as this iterates
                raise OSError(f"cannot remove {error.name}: {error.message}")

    def discard_partial(self, prefix: str) -> None:
        """Nothing: an object appears whole (one PUT, or a multipart upload completed at
        once) or not at all; a writer's unfinished copy is a scratch file."""

    def discard_dead_scratch(self) -> None:
        """Each scratch name carries its host and pid; a live process's copies stay."""
        host = socket.gethostname()
        for entry in self.scratch.glob(f"s3-{host}-*-*") if self.scratch.exists() else []:
            pid = entry.name.removeprefix(f"s3-{host}-").split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def _scratch_prefix() -> str:
    return f"s3-{socket.gethostname()}-{os.getpid()}-"
