"""`POST /jobs/clean`: one operation, two bodies (a multipart upload or a JSON source).

The route reads its body itself, so that both bodies share one path; their schemas
come from `UploadRequest` and `SourceRequest` (`src.api.openapi`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from pathlib import PurePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from src.api import errors, openapi
from src.api.deps import FilesDep, JobCacheDep, JobStoreDep, SettingsDep, SubmitterDep
from src.api.errors import ApiError, field_errors, shown
from src.api.schemas import SourceRequest, UploadRequest
from src.api.sending import TaskSender
from src.api.upload import FormError, FormReader, TextTooLong
from src.core import instruments
from src.data.options import CleaningOptions
from src.jobs import submit as submission
from src.jobs import uploads
from src.jobs.model import Job, new_job_id
from src.jobs.submit import describe_validation

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

MULTIPART, JSON = "multipart/form-data", "application/json"
# Uploads streaming to storage at once, each holding a thread (the rest wait their turn,
# their clients slowed by TCP), apart from the shared pool the other blocking calls use.
UPLOAD_THREADS = 32
# A JSON body is a few kilobytes (a path, options, a URL).
MAX_JSON_BYTES = 1 << 16


def job_response(job: Job, status: int) -> JSONResponse:
    return JSONResponse(
        job.model_dump(mode="json"), status_code=status, headers={"Location": f"/jobs/{job.id}"}
    )


def _invalid(exc: ValidationError, prefix: str) -> ApiError:
    found = field_errors(exc.errors())
    for error in found:
        error["loc"] = ["body", *error["loc"]]
    options = any(e["loc"][1:2] == ["options"] for e in found)
    what = "invalid options" if options else prefix
    return ApiError(errors.VALIDATION, f"{what}: {describe_validation(exc.errors())}", errors=found)


def _content_length(request: Request) -> int:
    raw = request.headers.get("content-length", "0")
    if not raw.isdigit():
        raise ApiError(errors.INVALID_REQUEST, "Content-Length must be a non-negative integer")
    return int(raw)


def _sender(request: Request) -> TaskSender:
    """The app's sender of `clean` tasks (batched: `src.api.sending`)."""
    sender: TaskSender | None = getattr(request.app.state, "sender", None)
    if sender is None:
        sender = request.app.state.sender = TaskSender()
    return sender


def _upload_threads(request: Request) -> anyio.CapacityLimiter:
    """The app's own pool of streaming threads (one per upload past SPOOL_BYTES)."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "upload_threads", None)
    if limiter is None:
        limiter = request.app.state.upload_threads = anyio.CapacityLimiter(UPLOAD_THREADS)
    return limiter


async def _upload(
    request: Request, files: FilesDep, settings: SettingsDep, job_id: str
) -> submission.Submission:
    """The multipart body read once: the file streams to storage as it arrives, and the
    form is checked as before (repeats, fields, file type, callback) once it has all come."""
    if _content_length(request) > settings.max_upload_bytes + (1 << 20):
        kind, limit = errors.UPLOAD_TOO_LARGE, settings.max_upload_mb
        raise ApiError(kind, f"upload exceeds MAX_UPLOAD_MB ({limit} MB)")
    limiter = _upload_threads(request)

    def open_upload(filename: str) -> uploads.Upload | None:
        try:
            return uploads.Upload(files, settings, job_id, filename, limiter)
        except submission.UnsupportedFile:
            return None  # its bytes go nowhere; refused below, as before, in order

    reader = FormReader(request.headers.get("content-type", ""), open_upload)
    try:
        form = await reader.read(request.stream())
        counts = Counter(key for key, _ in form.items)
        if repeated := [key for key, n in counts.items() if n > 1]:
            found = [
                {"loc": ["body", k], "msg": "sent more than once", "type": "repeated"}
                for k in repeated
            ]
            detail = f"invalid request: {repeated[0]}: sent more than once"
            raise ApiError(errors.VALIDATION, detail, errors=found)
        fields: dict[str, Any] = {k: v for k, v in form.items if v != ""}
        try:
            body = UploadRequest.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(exc, "invalid request") from None
        filename = body.file.filename
        submission.upload_suffix(filename)  # a type refused: its bytes were never stored
        callback_url = str(body.callback_url) if body.callback_url else None
        await _check_callback(callback_url, settings)
        assert form.upload is not None  # a `file` part of an accepted type
        relpath, digest = await form.upload.finish()
    except BaseException as exc:
        if reader.upload is not None:
            await reader.upload.discard()
        if isinstance(exc, FormError):
            raise ApiError(errors.INVALID_REQUEST, str(exc)) from None
        if isinstance(exc, TextTooLong):
            found = [{"loc": ["body", exc.name], "msg": str(exc), "type": "too_long"}]
            detail = f"invalid request: {exc.name}: {exc}"
            raise ApiError(errors.VALIDATION, detail, errors=found) from None
        if isinstance(exc, ClientDisconnect):
            log.info("job %s: upload stopped: the client went away; nothing kept", job_id)
            raise ApiError(errors.INVALID_REQUEST, "the client went away mid-body") from None
        raise
    return submission.Submission(
        job_id=job_id,
        input_relpath=relpath,
        input_name=PurePath(filename or "input").name,
        owns_input=True,
        options=body.options or CleaningOptions(),
        output_format=body.output_format,
        callback_url=callback_url,
        content_digest=digest,
    )


async def _check_callback(url: str | None, settings: SettingsDep) -> None:
    """A destination the workers would refuse is a 422 now (DNS blocks: in a thread)."""
    if url is not None:  # no thread for nothing: most submissions have no callback
        await asyncio.to_thread(submission.check_callback, url, settings.callback_allow_private)


async def _small_body(request: Request) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            detail = f"a JSON body is at most {MAX_JSON_BYTES} bytes"
            raise ApiError(errors.UPLOAD_TOO_LARGE, detail)
    return bytes(data)


async def _source(
    request: Request, files: FilesDep, settings: SettingsDep, job_id: str
) -> submission.Submission:
    try:
        body = SourceRequest.model_validate_json(await _small_body(request))
    except ValidationError as exc:
        raise _invalid(exc, "invalid request") from None
    callback_url = str(body.callback_url) if body.callback_url else None
    await _check_callback(callback_url, settings)
    relpath = await asyncio.to_thread(submission.find_source, files, body.source)
    return submission.Submission(
        job_id=job_id,
        input_relpath=relpath,
        input_name=PurePath(relpath).name,
        owns_input=False,
        options=body.options,
        output_format=body.output_format,
        callback_url=callback_url,
        content_digest=f"source:{relpath}",
    )


@router.post(
    "/clean",
    status_code=202,
    operation_id="submitCleaningJob",
    summary="Submit a cleaning job (an upload, or a file under DATA_DIR)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {"schema": openapi.ref(UploadRequest)},
                JSON: {"schema": openapi.ref(SourceRequest)},
            },
        }
    },
    responses={
        **openapi.job_response("Accepted: the job is queued; follow `Location`", 202),
        **openapi.problems(
            errors.INVALID_REQUEST,
            errors.INVALID_SOURCE,
            errors.SOURCE_NOT_FOUND,
            errors.IDEMPOTENCY_CONFLICT,
            errors.UPLOAD_TOO_LARGE,
            errors.UNSUPPORTED_MEDIA,
            errors.VALIDATION,
        ),
    },
)
async def submit_job(
    request: Request,
    store: JobStoreDep,
    settings: SettingsDep,
    files: FilesDep,
    cache: JobCacheDep,
    caller: SubmitterDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="Send the same key again to get the same job back, not a new one.",
        ),
    ] = None,
) -> JSONResponse:
    """Multipart (`file`, optional `options` JSON text) or JSON `{"source": ..., "options": ...}`.

    Only the job id goes to the broker; the file is streamed to DATA_DIR (or STORAGE_URL).
    A replayed `Idempotency-Key` answers the first job, with `Idempotent-Replayed: true`.
    """
    content_type = request.headers.get("content-type", "").lower()
    job_id = new_job_id()
    if content_type.startswith(MULTIPART):
        sub = await _upload(request, files, settings, job_id)
    elif content_type.startswith(JSON):
        sub = await _source(request, files, settings, job_id)
    else:
        given = shown(content_type) or "nothing"
        detail = f"send {MULTIPART} (a file) or {JSON} (a source), not {given}"
        raise ApiError(errors.UNSUPPORTED_MEDIA, detail)
    sub = dataclasses.replace(sub, owner=caller.name, owner_hash=caller.digest)
    try:
        job, created = await submission.submit(
            store, settings, files, _sender(request), sub, idempotency_key, cache.put_new
        )
    except BaseException:
        cache.changed(job_id)  # rolled back, or never stored: not to be answered
        raise
    if created:
        log.info("job %s: submitted by %s", job.id, caller.name or "anyone (no API_KEYS)")
        instruments.JOBS_SUBMITTED.labels(owner=caller.name or "").inc()
    response = job_response(job, 202)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response
