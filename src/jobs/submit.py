"""Submitting a job: save the input, record the job, queue its id — with no orphans.

Order of writes: (1) input file, (2) job document `queued`, (3) task on the
broker. If (2) fails, the file is removed: no job, no task. If (3) fails, the
document and the file are removed before the refusal: never a `queued` job
without a task, and a task is only ever sent for a job that exists. Should that
rollback itself fail, the sweep re-sends tasks of old queued jobs.

Refusals are domain errors (`SubmitError`); the API maps each to an HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, BinaryIO, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError, PyMongoError

from src.core.config import Settings
from src.core.storage import Storage, StorageUnavailable, TooLarge
from src.data.formats import INPUT_SUFFIXES, OutputFormat
from src.data.options import CleaningOptions
from src.jobs import destinations, layout
from src.jobs.async_store import AsyncJobStore
from src.jobs.model import Job
from src.jobs.records import JobDoc, new_job_doc

log = logging.getLogger(__name__)


class SubmitError(Exception):
    """A refused submission; nothing of it was kept. `errors`: pydantic's, per field."""

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors


class InvalidOptions(SubmitError):
    """The cleaning options do not validate."""


class UnsupportedFile(SubmitError):
    """Not a CSV, Parquet or JSON Lines file, by its name."""


class UploadTooLarge(SubmitError):
    """The upload is above MAX_UPLOAD_MB."""


class BadSource(SubmitError):
    """A `source` path that may not be read (absolute, '..', out through a link)."""


class SourceNotFound(SubmitError):
    """No file at `source`."""


class IdempotencyConflict(SubmitError):
    """The Idempotency-Key was used before with a different request."""


class Unavailable(SubmitError):
    """The store, the broker or the object store is down: nothing was created; retry later."""


OBJECT_STORE_DOWN = "object store unavailable: job not created; retry later"


class InvalidCallback(SubmitError):
    """The callback_url's host does not resolve, or resolves to a non-public address."""


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """'options.min_length: Input should be greater than or equal to 0'."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def parse_options(raw: str | None) -> CleaningOptions:
    if not raw:
        return CleaningOptions()
    try:
        return CleaningOptions.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", "options", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise InvalidOptions(
            f"invalid options: {describe_validation(exc.errors())}", errors
        ) from None


def upload_suffix(filename: str | None) -> str:
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise UnsupportedFile(
            f"unsupported file type {suffix or '(none)'!r}: send a .csv, .parquet or .jsonl file"
        )
    return INPUT_SUFFIXES[suffix]


# An upload is kept in memory up to this size, then streamed to storage from a thread:
# a small file costs one hop to a thread, and a large one at most this much memory.
SPOOL_BYTES = 1 << 20
# Chunks in flight between the request and the storage thread (the request's reads wait).
PIPE_CHUNKS = 16


class UploadAborted(Exception):
    """Raised to the storage thread when the request stops before the file's end, so that
    `Storage.save_stream` keeps nothing (an S3 multipart upload is aborted)."""


class Upload:
    """One upload's bytes on their way to storage, written as they arrive, read once.

    Up to SPOOL_BYTES stay in memory and are stored by `finish` (a small file reaches
    storage only once the whole request has been checked). Past that, `Storage.save_stream`
    runs in a thread, reading the chunks `write` hands over: the size limit and the sha256
    hold as the bytes stream, and whatever goes wrong (too large, a refused request, a
    client gone) `discard` leaves nothing: no file, no object, no S3 multipart upload.
    Streaming threads come from `limiter`, not the shared pool: a slow client holds one.
    """

    def __init__(
        self,
        files: Storage,
        settings: Settings,
        job_id: str,
        filename: str | None,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        self.files, self.job_id, self.limiter = files, job_id, limiter
        self.key = layout.input_relpath(job_id, upload_suffix(filename))
        self.limit, self.limit_mb = settings.max_upload_bytes, settings.max_upload_mb
        self.size = 0
        self._spool = bytearray()
        self._send: MemoryObjectSendStream[bytes] | None = None
        self._task: asyncio.Task[str] | None = None
        self._touched = False  # something may have reached storage
        self._aborted = False
        self._unreachable = False
        self._stored = False

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"upload exceeds MAX_UPLOAD_MB ({self.limit_mb} MB)")
        if self._send is None:
            self._spool += data
            if len(self._spool) <= SPOOL_BYTES:
                return
            data, self._spool = bytes(self._spool), bytearray()
            self._send = self._start()
        try:
            await self._send.send(data)
        except anyio.BrokenResourceError:  # the thread stopped reading: raise what it raised
            assert self._task is not None
            await self._task
            raise

    def _start(self) -> MemoryObjectSendStream[bytes]:
        send, receive = anyio.create_memory_object_stream[bytes](PIPE_CHUNKS)
        pipe = cast(BinaryIO, _Pipe(receive, self))
        self._task = asyncio.ensure_future(self._store(pipe, receive))
        return send

    async def _store(
        self, stream: BinaryIO, receive: MemoryObjectReceiveStream[bytes] | None = None
    ) -> str:
        self._touched = True
        try:
            digest, _ = await anyio.to_thread.run_sync(
                self.files.save_stream, self.key, stream, self.limit, limiter=self.limiter
            )
            return digest
        except TooLarge:
            raise UploadTooLarge(f"upload exceeds MAX_UPLOAD_MB ({self.limit_mb} MB)") from None
        except StorageUnavailable as exc:  # nothing reached it, so there is nothing to remove
            self._unreachable = True
            log.warning("submit: %s", exc)
            raise Unavailable(OBJECT_STORE_DOWN) from None
        finally:
            if receive is not None:
                receive.close()  # a `write` waiting on a full pipe fails instead of hanging

    async def finish(self) -> tuple[str, str]:
        """Store what is left; (key, sha256). On failure, nothing is kept."""
        try:
            if self._send is None:
                digest = await self._store(io.BytesIO(self._spool))
            else:
                assert self._task is not None
                self._send.close()
                digest = await self._task
        except BaseException:
            await self._remove()
            raise
        self._stored = True
        return self.key, digest

    async def discard(self) -> None:
        """The request failed before `finish`: stop the storage thread, remove what it stored.

        Shielded: a request cancelled (server shutting down) still cleans up after itself.
        """
        if self._stored:
            return  # the submission removes the job's files on its own refusals
        with anyio.CancelScope(shield=True):
            if self._task is not None:
                self._aborted = True
                assert self._send is not None
                self._send.close()
                with contextlib.suppress(Exception):
                    await self._task
            await self._remove()

    async def _remove(self) -> None:
        if self._touched and not self._unreachable:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(layout.remove_job, self.files, self.job_id)


class _Pipe:
    """What the storage thread reads: the chunks `Upload.write` sends, then b"" at the end
    (or UploadAborted, when the upload was discarded).

    `read(n)` waits for n bytes (fewer only at the end), as a file's would: the MinIO
    client gathers an 8 MB part by appending what each read gives, which costs quadratic
    copying when reads give 64 kB.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[bytes], upload: Upload) -> None:
        self.receive, self.upload = receive, upload
        self.pending = b""

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        size = 0
        while n < 0 or size < n:
            if not self.pending:
                try:
                    self.pending = anyio.from_thread.run(self.receive.receive)
                except anyio.EndOfStream:
                    if self.upload._aborted:
                        raise UploadAborted("the request ended before the upload did") from None
                    break
            take = len(self.pending) if n < 0 else min(len(self.pending), n - size)
            parts.append(self.pending[:take])
            self.pending = self.pending[take:]
            size += take
        return b"".join(parts)


def find_source(files: Storage, source: str) -> str:
    """The storage key of a user-named source. Blocking."""
    try:
        return layout.resolve_source(files, source)
    except layout.SourceError as exc:
        raise BadSource(str(exc)) from None
    except FileNotFoundError as exc:
        raise SourceNotFound(str(exc)) from None
    except StorageUnavailable as exc:
        log.warning("submit: %s", exc)
        raise Unavailable(OBJECT_STORE_DOWN) from None


def check_callback(url: str | None, allow_private: bool) -> None:
    """Refuse a callback_url the workers would refuse (`src.jobs.destinations`), before
    anything is stored. Blocking (DNS)."""
    if not url:
        return
    try:
        destinations.vet(url, allow_private)
    except destinations.Refused as exc:
        error = {"loc": ["body", "callback_url"], "msg": str(exc), "type": "callback_destination"}
        raise InvalidCallback(f"callback_url: {exc}", [error]) from None


@dataclass(frozen=True)
class Submission:
    """A request to clean one input, once its file is stored."""

    job_id: str
    input_relpath: str
    input_name: str
    owns_input: bool
    options: CleaningOptions
    output_format: OutputFormat
    callback_url: str | None
    content_digest: str  # sha256 of an upload, or "source:<key>"
    owner: str | None = None  # the API key's name
    owner_hash: str | None = None  # the API key's sha256: whose job it is

    def scoped(self, idempotency_key: str) -> str:
        """Idempotency keys are per owner: two teams may choose the same one."""
        return f"{self.owner_hash or '-'}:{idempotency_key}"

    def request_hash(self) -> str:
        """What makes two requests with one Idempotency-Key the same request."""
        canonical = json.dumps(
            [
                self.content_digest,
                self.options.model_dump(mode="json"),
                self.output_format,
                self.callback_url,
            ],
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


async def _replay(store: AsyncJobStore, key: str, digest: str) -> JobDoc | None:
    """The job an earlier request with this Idempotency-Key created, if any."""
    existing = await store.get_by_idempotency_key(key)
    if existing is None:
        return None
    if existing.get("request_hash") != digest:
        raise IdempotencyConflict("Idempotency-Key already used with a different request")
    return existing


async def submit(
    store: AsyncJobStore,
    settings: Settings,
    files: Storage,
    send_clean: Callable[[str], None],
    sub: Submission,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Record and queue the job; (job, created). Removes the job's files on any refusal."""
    job_id, digest = sub.job_id, sub.request_hash()
    scoped = sub.scoped(idempotency_key) if idempotency_key else None
    try:
        if scoped and (existing := await _replay(store, scoped, digest)):
            layout.remove_job(files, job_id)
            return Job.from_doc(existing), False
        doc = new_job_doc(
            job_id=job_id,
            input_relpath=sub.input_relpath,
            input_name=sub.input_name,
            owns_input=sub.owns_input,
            options=sub.options.model_dump(mode="json"),
            output_format=sub.output_format,
            retention_hours=settings.job_retention_hours,
            idempotency_key=scoped,
            request_hash=digest if scoped else None,
            callback_url=sub.callback_url,
            owner=sub.owner,
            owner_hash=sub.owner_hash,
        )
        try:
            await store.insert(doc)
        except DuplicateKeyError:  # a concurrent twin won the race
            layout.remove_job(files, job_id)
            existing = await _replay(store, scoped or "", digest)
            if existing is None:
                raise
            return Job.from_doc(existing), False
    except PyMongoError as exc:
        layout.remove_job(files, job_id)
        log.warning("submit: store unavailable: %s", exc)
        raise Unavailable("job store (MongoDB) unavailable: job not created; retry later") from None
    except BaseException:  # refused, or anything unexpected: no job, so no file either
        layout.remove_job(files, job_id)
        raise

    try:
        await anyio.to_thread.run_sync(send_clean, job_id)
    except Exception as exc:  # kombu raises several kinds when Redis is down
        log.warning("submit: broker unavailable, rolling back job %s: %s", job_id, exc)
        try:
            await store.delete(job_id)
        except PyMongoError:
            log.error("submit: rollback of job %s failed; the sweep will resend it", job_id)
        else:
            layout.remove_job(files, job_id)
        raise Unavailable("broker (Redis) unavailable: job not created; retry later") from None
    return Job.from_doc(doc), True
