"""The job routes after submission: inspect (and wait), list, download, cancel, follow, delete."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool

from src.api import errors, openapi
from src.api.deps import (
    Caller,
    FilesDep,
    JobStoreDep,
    NoticesDep,
    ReaderDep,
    SettingsDep,
    job_watcher,
)
from src.api.errors import ApiError, shown
from src.api.jobcache import JobCache
from src.api.models import JobList
from src.api.ratelimit import StreamSlots
from src.api.routes.submit import job_response
from src.api.schemas import EXAMPLE_ID
from src.api.watch import job_changes
from src.core import instruments
from src.core.storage import StorageUnavailable
from src.data.formats import MEDIA_TYPES
from src.jobs import layout
from src.jobs.async_store import AsyncJobStore
from src.jobs.model import JOB_ID, TERMINAL, Job, JobStatus
from src.jobs.records import JobDoc

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_WAIT_SECONDS = 60
JobId = Annotated[str, openapi.path_param(EXAMPLE_ID)]


async def _get(
    store: AsyncJobStore, job_id: str, caller: Caller, cache: JobCache | None = None
) -> JobDoc:
    """The job, if it exists and is the caller's (another key's job is "not found"); from
    `cache` when given (`src.api.jobcache`: as fresh as the change notices)."""
    doc = await (store.get(job_id) if cache is None else cache.get(job_id, store))
    if doc is None or not caller.sees(doc):
        raise ApiError(errors.JOB_NOT_FOUND, f"job {shown(job_id)} not found")
    return doc


def _encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:  # not base64, not ASCII, not UTF-8
        job_id = ""
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(
            errors.INVALID_CURSOR, "invalid cursor: pass next_cursor from the previous page"
        )
    return job_id


@router.get(
    "",
    operation_id="listJobs",
    summary="List jobs, newest first",
    responses=openapi.problems(errors.INVALID_CURSOR, errors.VALIDATION),
)
async def list_jobs(
    store: JobStoreDep,
    caller: ReaderDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobList:
    before = _decode_cursor(cursor) if cursor else None
    docs = await store.list(status, limit, before, owner=None if caller.admin else caller.digest)
    items = [Job.from_doc(d) for d in docs]
    next_cursor = _encode_cursor(items[-1].id) if len(items) == limit else None
    return JobList(items=items, next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=Job,
    operation_id="getJob",
    summary="Status, progress, report; optionally wait for the end",
    responses={
        **openapi.job_response("The job"),
        **openapi.problems(errors.JOB_NOT_FOUND, errors.VALIDATION),
    },
)
async def get_job(
    request: Request,
    job_id: JobId,
    store: JobStoreDep,
    caller: ReaderDep,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Answer as soon as the job is finished, or after this many seconds.",
        ),
    ] = None,
) -> Response:
    # The route pollers hit (its docstring would be the operation's description): the
    # body is rendered once per change of the job (the cache keeps it), and returned as
    # it is rather than as a model FastAPI would validate and render again; the cache is
    # the app's, not a dependency (FastAPI solves each of those on every request).
    cache: JobCache = request.app.state.jobs
    doc = await _get(store, job_id, caller, cache)
    if wait and doc["status"] not in TERMINAL:
        await job_watcher(request, store).wait_finished(job_id, wait)
        doc = await _get(store, job_id, caller)  # the store's: the watcher may have polled
    return Response(cache.rendered(doc, _job_json), media_type="application/json")


def _job_json(doc: JobDoc) -> bytes:
    return Job.from_doc(doc).model_dump_json(by_alias=True).encode()


@router.get(
    "/{job_id}/result",
    operation_id="getJobResult",
    summary="Download the cleaned file",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The cleaned file (CSV or Parquet, as the job asked)",
            "content": {
                media.split(";")[0]: {"schema": {"type": "string", "format": "binary"}}
                for media in MEDIA_TYPES.values()
            },
        },
        **openapi.problems(errors.JOB_NOT_FOUND, errors.RESULT_GONE, errors.JOB_STATE),
    },
)
async def get_result(
    job_id: JobId, store: JobStoreDep, files: FilesDep, caller: ReaderDep
) -> Response:
    doc = await _get(store, job_id, caller)
    result = doc.get("result")
    if doc["status"] != JobStatus.SUCCEEDED or result is None:
        raise ApiError(
            errors.JOB_STATE, f"job is {doc['status']}; the result is available once it succeeded"
        )
    try:
        size = await asyncio.to_thread(files.size, result)
    except StorageUnavailable:  # an outage, not a fault of this request: retry later
        detail = "object store unavailable; retry later"
        raise ApiError(errors.UNAVAILABLE, detail, errors.RETRY_LATER) from None
    if size is None:
        raise ApiError(errors.RESULT_GONE, f"result of job {job_id} is gone (expired or removed)")
    fmt = doc["output_format"]
    media = MEDIA_TYPES[fmt]
    filename = f"{PurePath(doc['input_name'] or 'input').stem}.cleaned.{fmt}"
    if (local := files.local_path(result)) is not None:  # sendfile, ranges, ETag
        return FileResponse(local, media_type=media, filename=filename)
    return StreamingResponse(  # from the bucket, a megabyte at a time
        iterate_in_threadpool(files.iter_bytes(result)),
        media_type=media,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


@router.post(
    "/{job_id}/cancel",
    operation_id="cancelJob",
    summary="Cancel: a queued job at once, a running one at its next chunk",
    responses={
        **openapi.job_response("The job, cancelled (queued) or asked to stop (running)"),
        **openapi.problems(errors.JOB_NOT_FOUND, errors.JOB_STATE),
    },
)
async def cancel_job(
    job_id: JobId, store: JobStoreDep, notices: NoticesDep, caller: ReaderDep
) -> JSONResponse:
    await _get(store, job_id, caller)  # the caller's job, or 404
    doc = await store.cancel(job_id)
    if doc is not None:
        notices.publish(job_id)  # its waiters and streams, in every API process
    if doc is None:
        current = await _get(store, job_id, caller)
        raise ApiError(
            errors.JOB_STATE,
            f"job is {current['status']}; only queued or running jobs can be cancelled",
        )
    if doc["status"] == JobStatus.CANCELLED:  # a queued job, ended here (no worker)
        instruments.JOBS_CANCELLED_QUEUED.labels(status=doc["status"]).inc()
    return job_response(Job.from_doc(doc), 200)


@router.delete(
    "/{job_id}",
    operation_id="deleteJob",
    summary="Delete a finished job: its record and its files",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted"},
        **openapi.problems(errors.JOB_NOT_FOUND, errors.JOB_STATE),
    },
)
async def delete_job(
    job_id: JobId, store: JobStoreDep, files: FilesDep, notices: NoticesDep, caller: ReaderDep
) -> Response:
    """A queued or running job answers 409: cancel it first. A `source` file is never removed."""
    doc = await _get(store, job_id, caller)
    if doc["status"] not in TERMINAL:
        raise ApiError(errors.JOB_STATE, f"job is {doc['status']}; cancel it first, then delete it")
    await asyncio.to_thread(layout.remove_job, files, job_id)
    await store.delete_job(job_id)
    notices.publish(job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    operation_id="streamJobEvents",
    summary="Server-Sent Events: status and progress until the job ends",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`job` events (the job JSON) until it ends; `gone` if it is deleted",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: job\ndata: {"id": "...", "status": "running", ...}\n\n',
                }
            },
        },
        **openapi.problems(errors.JOB_NOT_FOUND),
    },
)
async def job_events(
    job_id: JobId,
    request: Request,
    store: JobStoreDep,
    settings: SettingsDep,
    notices: NoticesDep,
    caller: ReaderDep,
) -> EventSourceResponse:
    """Counted once against the read budget; each open stream holds one of the caller's
    MAX_STREAMS_PER_KEY slots until it ends. The job is read again when a notice says it
    changed (or on the fallback poll), and an event sent only when the store shows one."""
    await _get(store, job_id, caller)
    free = stream_slots(request).take(caller.who, settings.max_streams_per_key)
    fallback = settings.watch_fallback_seconds

    async def stream() -> AsyncIterator[dict[str, str]]:
        last: tuple[Any, ...] | None = None
        try:
            changes = job_changes(store, notices, job_id, fallback)
            async with contextlib.aclosing(changes) as docs:
                async for doc in docs:
                    if doc is None:
                        yield {"event": "gone", "data": json.dumps({"id": job_id})}
                        return
                    job = Job.from_doc(doc)
                    state = (job.status, job.progress.rows_done, job.cancel_requested)
                    if state != last:
                        last = state
                        yield {"event": "job", "data": job.model_dump_json()}
                    if job.status in TERMINAL:
                        return
        finally:
            free()

    # `free` twice is harmless: the background task covers a stream never started.
    return EventSourceResponse(stream(), ping=15, background=BackgroundTask(free))


def stream_slots(request: Request) -> StreamSlots:
    slots: StreamSlots | None = getattr(request.app.state, "stream_slots", None)
    if slots is None:
        slots = request.app.state.stream_slots = StreamSlots()
    return slots
