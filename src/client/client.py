"""`CleaningClient`: the cleaning job service from Python, typed with the API's own models.

Imports httpx and pydantic models only (no pandas, no polars), so it runs where the
cleaning engine is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from src.api.models import JobList
from src.client.errors import ApiError, JobFailed, job_of
from src.client.events import EventStream, JobRef, changed, job_id_of, job_path, time_left
from src.data.formats import DEFAULT_OUTPUT, INPUT_SUFFIXES, OutputFormat
from src.data.formats import output_format as format_for
from src.data.options import CleaningOptions
from src.jobs.model import TERMINAL, Job, JobStatus

log = logging.getLogger(__name__)

Options = CleaningOptions | Mapping[str, Any]
ProgressCallback = Callable[[Job], None]

API_KEY_HEADER = "X-API-Key"
MAX_SERVER_WAIT = 60.0  # the most `GET /jobs/{id}?wait=` accepts
PROGRESS_POLL = 1.0  # without the event stream, with on_progress: a fresh job this often
UPLOAD_READ_TIMEOUT = 300.0  # the service stores the whole upload before it answers
CHUNK_BYTES = 1 << 20
UPLOAD_MEDIA = {
    ".csv": "text/csv",
    ".parquet": "application/vnd.apache.parquet",
    ".jsonl": "application/x-ndjson",
}


JobPage = JobList  # one page of `GET /jobs`, newest first


class CleaningClient:
    """The cleaning service at `base_url` (e.g. `http://127.0.0.1:8000`).

    `api_key` is sent as `X-API-Key`; `timeout` (seconds) bounds connecting and each
    read or write. Errors: `ApiError` (the service refused: its problem document),
    `JobFailed` (`clean` only: the job ended failed or cancelled), `TimeoutError`
    (`wait`), httpx's `TransportError` (the service cannot be reached). Use it as a
    context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "product-cleaning-client"}
        if api_key:
            headers[API_KEY_HEADER] = api_key
        self.base_url = base_url
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CleaningClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- submitting ---------------------------------------------------------------------

    def submit(
        self,
        path: str | os.PathLike[str],
        options: Options | None = None,
        output_format: OutputFormat = DEFAULT_OUTPUT,
        idempotency_key: str | None = None,
        *,
        callback_url: str | None = None,
    ) -> Job:
        """Upload the local file at `path` (streamed from disk) and queue a job to clean it.

        `options`: a `CleaningOptions` (only the fields set are sent) or a dict, which
        the service validates (a bad one is an `ApiError` 422). The same
        `idempotency_key` with the same request returns the first job, not a new one.
        """
        path = Path(path)
        fields: dict[str, str] = {"output_format": output_format}
        if options is not None:
            fields["options"] = json.dumps(_options_json(options))
        if callback_url:
            fields["callback_url"] = callback_url
        media = UPLOAD_MEDIA.get(INPUT_SUFFIXES.get(path.suffix.lower(), ""), "")
        with path.open("rb") as fh:
            response = self._http.post(
                "jobs/clean",
                files={"file": (path.name, fh, media or "application/octet-stream")},
                data=fields,
                headers=_idempotency(idempotency_key),
                timeout=httpx.Timeout(self.timeout, read=max(self.timeout, UPLOAD_READ_TIMEOUT)),
            )
        return job_of(response)

    def submit_source(
        self,
        source: str,
        options: Options | None = None,
        output_format: OutputFormat = DEFAULT_OUTPUT,
        idempotency_key: str | None = None,
        *,
        callback_url: str | None = None,
    ) -> Job:
        """Queue a job for a file already on the service's side: `source` is a path
        relative to its `DATA_DIR` (or a key in its bucket), e.g. `raw/X_test.csv`."""
        body: dict[str, Any] = {"source": source, "output_format": output_format}
        if options is not None:
            body["options"] = _options_json(options)
        if callback_url:
            body["callback_url"] = callback_url
        response = self._http.post("jobs/clean", json=body, headers=_idempotency(idempotency_key))
        return job_of(response)

    # -- one job ------------------------------------------------------------------------

    def get(self, job: JobRef, wait: float | None = None) -> Job:
        """The job now; with `wait` (seconds, at most 60), once it is finished or when
        that time is up, whichever comes first."""
        params: dict[str, float] = {}
        read = self.timeout
        if wait:
            params["wait"] = min(wait, MAX_SERVER_WAIT)
            read += params["wait"]
        response = self._http.get(
            job_path(job), params=params, timeout=httpx.Timeout(self.timeout, read=read)
        )
        return job_of(response)

    def wait(
        self,
        job: JobRef,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Until the job is finished (succeeded, failed or cancelled): its final state.

        Follows `GET /jobs/{id}/events`; if that stream fails (a cut connection, a proxy
        without Server-Sent Events), asks `GET /jobs/{id}?wait=` instead. `on_progress`
        gets the job at each change, the final state included. Raises `TimeoutError`
        after `timeout` seconds (None: no limit); the job goes on running.
        """
        job_id = job_id_of(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Job | None = None

        def finished(current: Job) -> bool:
            nonlocal last
            if on_progress is not None and (last is None or changed(last, current)):
                on_progress(current)
            last = current
            return current.status in TERMINAL

        stream = EventStream(self._http, job_id, self.timeout)
        try:
            for current in stream.jobs(deadline):
                if finished(current):
                    return current
        finally:
            stream.stop()
        while True:  # the stream ended early or failed, or time is up
            remaining = time_left(deadline)
            if remaining == 0:
                status = last.status if last else "not finished"
                raise TimeoutError(f"job {job_id} still {status} after {timeout}s")
            step = PROGRESS_POLL if on_progress is not None else MAX_SERVER_WAIT
            current = self.get(job_id, wait=step if remaining is None else min(step, remaining))
            if finished(current):
                return current

    def download(self, job: JobRef, dest: str | os.PathLike[str]) -> Path:
        """Save the result of a succeeded job at `dest`, via a temporary file beside it
        renamed at the end: `dest` is never a half-written file. A job not succeeded is
        an `ApiError` 409."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._http.stream("GET", f"{job_path(job)}/result") as response:
            if not response.is_success:
                response.read()
                raise ApiError.from_response(response)
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            tmp = Path(name)
            written = 0
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        written += fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                expected = response.headers.get("content-length")
                if "content-encoding" in response.headers:  # Content-Length counts encoded bytes
                    written = response.num_bytes_downloaded
                if expected is not None and written != int(expected):
                    raise httpx.RemoteProtocolError(
                        f"result cut short: {written} of {expected} bytes",
                        request=response.request,
                    )
                tmp.chmod(0o644)
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return dest

    def cancel(self, job: JobRef) -> Job:
        """Cancel a queued job (at once) or a running one (at its next chunk); a finished
        one is an `ApiError` 409."""
        return job_of(self._http.post(f"{job_path(job)}/cancel"))

    def delete(self, job: JobRef) -> None:
        """Remove a finished job, its input and its result; a queued or running one is an
        `ApiError` 409 (cancel it first)."""
        response = self._http.delete(job_path(job))
        if not response.is_success:
            raise ApiError.from_response(response)

    # -- many jobs ----------------------------------------------------------------------

    def list_jobs(
        self, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobPage:
        """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        response = self._http.get("jobs", params=params)
        if not response.is_success:
            raise ApiError.from_response(response)
        return JobPage.model_validate_json(response.content)

    def iter_jobs(self, status: JobStatus | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job (in `status`), newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(status, page_size, cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # -- all in one ---------------------------------------------------------------------

    def clean(
        self,
        path: str | os.PathLike[str],
        dest: str | os.PathLike[str],
        options: Options | None = None,
        *,
        output_format: OutputFormat | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Upload `path`, wait for the job, download its result to `dest`: the finished job
        (its `report` says what changed). The format is `output_format`, else Parquet for
        a `.parquet` `dest`, else CSV. Raises `JobFailed` when the job fails or is
        cancelled (nothing is written at `dest`)."""
        fmt = output_format or format_for(Path(dest))
        job = self.submit(path, options, fmt, idempotency_key)
        job = self.wait(job, timeout, on_progress)
        if job.status != JobStatus.SUCCEEDED:
            raise JobFailed(job)
        self.download(job, dest)
        return job


def _options_json(options: Options) -> dict[str, Any]:
    if isinstance(options, CleaningOptions):
        return options.model_dump(mode="json", exclude_unset=True)
    return dict(options)


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}
