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

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from src.api import errors, openapi
from src.api.deps import FilesDep, JobStoreDep, SettingsDep, SubmitterDep
from src.api.errors import ApiError, field_errors, shown
from src.api.schemas import SourceRequest, UploadRequest
from src.core import broker, instruments
from src.data.options import CleaningOptions
from src.jobs import submit as submission
from src.jobs.model import Job, new_job_id
from src.jobs.submit import describe_validation

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

MULTIPART, JSON = "multipart/form-data", "application/json"
# The parts of an upload besides the file: options, output_format, callback_url.
MAX_FIELDS = 10
ONE_FILE = "(only `file` is a file part: options, output_format and callback_url are text)"
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


async def _upload(
    request: Request, files: FilesDep, settings: SettingsDep, job_id: str
) -> submission.Submission:
    if _content_length(request) > settings.max_upload_bytes + (1 << 20):
        kind, limit = errors.UPLOAD_TOO_LARGE, settings.max_upload_mb
        raise ApiError(kind, f"upload exceeds MAX_UPLOAD_MB ({limit} MB)")
    try:
        form = await request.form(max_files=1, max_fields=MAX_FIELDS)
    except HTTPException as exc:
        if "Too many files" not in str(exc.detail):
            raise
        raise ApiError(errors.INVALID_REQUEST, f"{exc.detail} {ONE_FILE}") from None
    counts = Counter(key for key, _ in form.multi_items())
    if repeated := [key for key, n in counts.items() if n > 1]:
        found = [
            {"loc": ["body", k], "msg": "sent more than once", "type": "repeated"} for k in repeated
        ]
        detail = f"invalid request: {repeated[0]}: sent more than once"
        raise ApiError(errors.VALIDATION, detail, errors=found)
    fields: dict[str, Any] = {k: v for k, v in form.items() if v != ""}
    try:
        body = UploadRequest.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc, "invalid request") from None
    upload: UploadFile = body.file
    submission.upload_suffix(upload.filename)  # refuse the type before storing anything
    callback_url = str(body.callback_url) if body.callback_url else None
    await _check_callback(callback_url, settings)
    upload.file.seek(0)
    relpath, digest = await asyncio.to_thread(
        submission.save_upload, files, settings, job_id, upload.file, upload.filename
    )
    return submission.Submission(
        job_id=job_id,
        input_relpath=relpath,
        input_name=PurePath(upload.filename or "input").name,
        owns_input=True,
        options=body.options or CleaningOptions(),
        output_format=body.output_format,
        callback_url=callback_url,
        content_digest=digest,
    )


async def _check_callback(url: str | None, settings: SettingsDep) -> None:
    """A destination the workers would refuse is a 422 now (DNS blocks: in a thread)."""
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
    job, created = await submission.submit(
        store, settings, files, broker.send_clean, sub, idempotency_key
    )
    if created:
        log.info("job %s: submitted by %s", job.id, caller.name or "anyone (no API_KEYS)")
        instruments.JOBS_SUBMITTED.labels(owner=caller.name or "").inc()
    response = job_response(job, 202)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response
