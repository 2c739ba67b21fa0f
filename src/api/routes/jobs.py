"""The job routes: submit, inspect, list, download, cancel, follow."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import UploadFile

from src.api.deps import ApiKeyDep, FilesDep, JobStoreDep, SettingsDep
from src.api.errors import ApiError
from src.api.schemas import (
    CALLBACK_URL,
    JOB_RESPONSE,
    NOT_FOUND,
    SUBMIT_BODY,
    UNAUTHORIZED,
    UNAVAILABLE,
    JobList,
    SourceRequest,
    error,
)
from src.core import broker, instruments
from src.data.formats import DEFAULT_OUTPUT, MEDIA_TYPES, OUTPUT_FORMATS, OutputFormat
from src.jobs import submit as submission
from src.jobs.model import JOB_ID, TERMINAL, Job, JobStatus, new_job_id
from src.jobs.records import JobDoc
from src.jobs.store import AsyncJobStore

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _job_response(job: Job, status: int) -> JSONResponse:
    return JSONResponse(
        job.model_dump(mode="json"), status_code=status, headers={"Location": f"/jobs/{job.id}"}
    )


async def _get(store: AsyncJobStore, job_id: str) -> JobDoc:
    doc = await store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found")
    return doc


@router.post(
    "/clean",
    status_code=202,
    summary="Submit a cleaning job (upload or a file under DATA_DIR)",
    openapi_extra=SUBMIT_BODY,
    responses={
        202: {"description": "Accepted; follow `Location`", **JOB_RESPONSE},
        400: error("Bad `source` path", "source must not contain '..'"),
        401: UNAUTHORIZED,
        404: error("`source` not found", "source not found under DATA_DIR: raw/X.csv"),
        409: error(
            "Idempotency-Key reused with another request",
            "Idempotency-Key already used with a different request",
        ),
        413: error("Upload over MAX_UPLOAD_MB", "upload exceeds MAX_UPLOAD_MB (512 MB)"),
        415: error(
            "Not CSV/Parquet, or not multipart/JSON",
            "unsupported file type '.xlsx': send a .csv, .parquet or .jsonl file",
        ),
        422: error(
            "Invalid options",
            "invalid options: min_length: Input should be greater than or equal to 0",
        ),
        503: UNAVAILABLE,
    },
)
async def submit_job(
    request: Request,
    store: JobStoreDep,
    settings: SettingsDep,
    files: FilesDep,
    _key: ApiKeyDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Multipart (`file`, optional `options` JSON) or JSON `{"source": ..., "options": ...}`.

    Only the job id goes to the broker; the file is streamed to DATA_DIR (or STORAGE_URL).
    """
    content_type = request.headers.get("content-type", "").lower()
    job_id = new_job_id()
    if content_type.startswith("multipart/form-data"):
        length = int(request.headers.get("content-length") or 0)
        if length > settings.max_upload_bytes + (1 << 20):
            raise ApiError(413, f"upload exceeds MAX_UPLOAD_MB ({settings.max_upload_mb} MB)")
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "multipart field 'file' is required (the CSV or Parquet file)")
        options = submission.parse_options(_text(form.get("options")))
        output_format = _output_format(_text(form.get("output_format")))
        callback_url = _callback_url(_text(form.get("callback_url")))
        upload.file.seek(0)
        relpath, digest = await asyncio.to_thread(
            submission.save_upload, files, settings, job_id, upload.file, upload.filename
        )
        sub = submission.Submission(
            job_id=job_id,
            input_relpath=relpath,
            input_name=PurePath(upload.filename or "input").name,
            owns_input=True,
            options=options,
            output_format=output_format,
            callback_url=callback_url,
            content_digest=digest,
        )
    elif content_type.startswith("application/json"):
        try:
            body = SourceRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            detail = submission.describe_validation(exc.errors())
            raise ApiError(422, f"invalid request: {detail}") from None
        relpath = await asyncio.to_thread(submission.find_source, files, body.source)
        sub = submission.Submission(
            job_id=job_id,
            input_relpath=relpath,
            input_name=PurePath(relpath).name,
            owns_input=False,
            options=body.options,
            output_format=body.output_format,
            callback_url=str(body.callback_url) if body.callback_url else None,
            content_digest=f"source:{relpath}",
        )
    else:
        raise ApiError(415, "send multipart/form-data (a file) or application/json (a source)")

    job, created = await submission.submit(
        store, settings, files, broker.send_clean, sub, idempotency_key
    )
    if created:
        instruments.JOBS_SUBMITTED.inc()
    response = _job_response(job, 202)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _callback_url(value: str | None) -> str | None:
    """Checked as the JSON body's `callback_url` is (an http or https URL)."""
    if value is None:
        return None
    try:
        return str(CALLBACK_URL.validate_python(value))
    except ValidationError as exc:
        detail = submission.describe_validation(exc.errors())
        raise ApiError(422, f"invalid request: callback_url: {detail}") from None


def _output_format(value: str | None) -> OutputFormat:
    for fmt in OUTPUT_FORMATS:
        if value == fmt:
            return fmt
    if value is None:
        return DEFAULT_OUTPUT
    raise ApiError(422, "output_format must be 'csv' or 'parquet'")


def _encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        job_id = ""
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(400, "invalid cursor: pass next_cursor from the previous page")
    return job_id


@router.get(
    "",
    response_model=JobList,
    summary="List jobs, newest first",
    responses={401: UNAUTHORIZED, 503: UNAVAILABLE},
)
async def list_jobs(
    store: JobStoreDep,
    _key: ApiKeyDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: str | None = None,
) -> JobList:
    before = _decode_cursor(cursor) if cursor else None
    docs = await store.list(status, limit, before)
    items = [Job.from_doc(d) for d in docs]
    next_cursor = _encode_cursor(items[-1].id) if len(items) == limit else None
    return JobList(items=items, next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=Job,
    summary="Status, progress, report",
    responses={200: JOB_RESPONSE, 401: UNAUTHORIZED, 404: NOT_FOUND},
)
async def get_job(job_id: str, store: JobStoreDep, _key: ApiKeyDep) -> Job:
    return Job.from_doc(await _get(store, job_id))


@router.get(
    "/{job_id}/result",
    summary="Download the cleaned file",
    response_class=FileResponse,
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        401: UNAUTHORIZED,
        404: NOT_FOUND,
        409: error(
            "Not succeeded (yet)", "job is running; the result is available once it succeeded"
        ),
    },
)
async def get_result(job_id: str, store: JobStoreDep, files: FilesDep, _key: ApiKeyDep) -> Response:
    doc = await _get(store, job_id)
    result = doc.get("result")
    if doc["status"] != JobStatus.SUCCEEDED or result is None:
        raise ApiError(409, f"job is {doc['status']}; the result is available once it succeeded")
    size = await asyncio.to_thread(files.size, result)
    if size is None:
        raise ApiError(404, f"result of job {job_id} is gone (expired or removed)")
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
    summary="Cancel: queued at once, running at the next chunk",
    responses={
        200: JOB_RESPONSE,
        401: UNAUTHORIZED,
        404: NOT_FOUND,
        409: error(
            "Already finished", "job is succeeded; only queued or running jobs can be cancelled"
        ),
    },
)
async def cancel_job(job_id: str, store: JobStoreDep, _key: ApiKeyDep) -> JSONResponse:
    doc = await store.cancel(job_id)
    if doc is None:
        current = await _get(store, job_id)
        raise ApiError(
            409, f"job is {current['status']}; only queued or running jobs can be cancelled"
        )
    if doc["status"] == JobStatus.CANCELLED:  # a queued job, ended here (no worker)
        instruments.JOBS_CANCELLED_QUEUED.labels(status=doc["status"]).inc()
    return _job_response(Job.from_doc(doc), 200)


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: status and progress until the job ends",
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'event: job\ndata: {"id": "...", "status": "running", ...}\n\n'
                }
            }
        },
        401: UNAUTHORIZED,
        404: NOT_FOUND,
    },
)
async def job_events(job_id: str, store: JobStoreDep, _key: ApiKeyDep) -> EventSourceResponse:
    await _get(store, job_id)

    async def stream() -> AsyncIterator[dict[str, str]]:
        last: tuple[Any, ...] | None = None
        while True:
            doc = await store.get(job_id)
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
            await asyncio.sleep(0.25)

    return EventSourceResponse(stream(), ping=15)
