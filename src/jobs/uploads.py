"""An upload's bytes on their way to storage, written as they arrive and read once
(`Upload`): held in memory while small, streamed to `Storage.save_stream` from a thread
when large, and removed whatever goes wrong. The HTTP side that feeds it is
`src.api.upload`; what a submission does with the stored file is `src.jobs.submit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import BinaryIO, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from src.core.config import Settings
from src.core.storage import Storage, StorageUnavailable, TooLarge
from src.jobs import layout
from src.jobs.submit import OBJECT_STORE_DOWN, Unavailable, UploadTooLarge, upload_suffix

log = logging.getLogger(__name__)


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
