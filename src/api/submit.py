"""Submitting a job: save the input, record the job, queue its id — with no orphans.

Order of writes: (1) input file, (2) job document `queued`, (3) task on the
broker. If (2) fails, the file is removed: no job, no task. If (3) fails, the
document and the file are removed before the 503: never a `queued` job without
a task, and a task is only ever sent for a job that exists. Should that
rollback itself fail, the sweep re-sends tasks of old queued jobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import PurePath
from typing import Any

from fastapi import UploadFile
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError, PyMongoError
from starlette.concurrency import run_in_threadpool

from src.api.errors import ApiError, describe_validation
from src.core import metrics, storage
from src.core.config import Settings
from src.data.options import CleaningOptions
from src.jobs.model import Job, new_job_doc
from src.jobs.store import AsyncJobStore
from src.worker.celery_app import send_clean

log = logging.getLogger(__name__)

ACCEPTED_SUFFIXES = {
    ".csv": ".csv",
    ".txt": ".csv",
    ".parquet": ".parquet",
    ".pq": ".parquet",
    ".jsonl": ".jsonl",
    ".ndjson": ".jsonl",
}


def parse_options(raw: str | None) -> CleaningOptions:
    if not raw:
        return CleaningOptions()
    try:
        return CleaningOptions.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, f"invalid options: {describe_validation(exc.errors())}") from None


def upload_suffix(filename: str | None) -> str:
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise ApiError(
            415,
            f"unsupported file type {suffix or '(none)'!r}: send a .csv, .parquet or .jsonl file",
        )
    return ACCEPTED_SUFFIXES[suffix]


def request_hash(
    content: str, options: CleaningOptions, output_format: str, callback: str | None
) -> str:
    canonical = json.dumps(
        [content, options.model_dump(mode="json"), output_format, callback], sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _replay(store: AsyncJobStore, key: str, digest: str) -> dict[str, Any] | None:
    """The job an earlier request with this Idempotency-Key created, if any."""
    existing = await store.get_by_idempotency_key(key)
    if existing is None:
        return None
    if existing.get("request_hash") != digest:
        raise ApiError(409, "Idempotency-Key already used with a different request")
    return existing


async def submit(
    store: AsyncJobStore,
    settings: Settings,
    files: storage.Storage,
    *,
    job_id: str,
    input_relpath: str,
    input_name: str,
    owns_input: bool,
    options: CleaningOptions,
    output_format: str,
    callback_url: str | None,
    idempotency_key: str | None,
    digest: str,
) -> tuple[Job, bool]:
    """Record and queue the job; (job, created). Removes the job's files on any refusal."""
    try:
        if idempotency_key and (existing := await _replay(store, idempotency_key, digest)):
            files.remove_job(job_id)
            return Job.from_doc(existing), False
        doc = new_job_doc(
            job_id=job_id,
            input_relpath=input_relpath,
            input_name=input_name,
            owns_input=owns_input,
            options=options.model_dump(mode="json"),
            output_format=output_format,
            retention_hours=settings.job_retention_hours,
            idempotency_key=idempotency_key,
            request_hash=digest if idempotency_key else None,
            callback_url=callback_url,
        )
        try:
            await store.insert(doc)
        except DuplicateKeyError:  # a concurrent twin won the race
            files.remove_job(job_id)
            existing = await _replay(store, idempotency_key or "", digest)
            if existing is None:
                raise
            return Job.from_doc(existing), False
    except PyMongoError as exc:
        files.remove_job(job_id)
        log.warning("submit: store unavailable: %s", exc)
        raise ApiError(
            503,
            "job store (MongoDB) unavailable: job not created; retry later",
            headers={"Retry-After": "5"},
        ) from None
    except ApiError:
        files.remove_job(job_id)
        raise

    try:
        await run_in_threadpool(send_clean, job_id)
    except Exception as exc:  # kombu raises several kinds when Redis is down
        log.warning("submit: broker unavailable, rolling back job %s: %s", job_id, exc)
        try:
            await store.delete(job_id)
        except PyMongoError:
            log.error("submit: rollback of job %s failed; the sweep will resend it", job_id)
        else:
            files.remove_job(job_id)
        raise ApiError(
            503,
            "broker (Redis) unavailable: job not created; retry later",
            headers={"Retry-After": "5"},
        ) from None
    metrics.JOBS_SUBMITTED.inc()
    return Job.from_doc(doc), True


def copy_upload(
    upload: UploadFile, settings: Settings, files: storage.Storage, job_id: str
) -> tuple[str, str]:
    """Stream an upload into the job's folder (or bucket); (key, sha256). Over the limit: 413."""
    rel = storage.input_relpath(job_id, upload_suffix(upload.filename))
    upload.file.seek(0)
    try:
        digest, _ = files.save_stream(rel, upload.file, settings.max_upload_bytes)
    except storage.TooLarge:
        files.remove_job(job_id)
        raise ApiError(413, f"upload exceeds MAX_UPLOAD_MB ({settings.max_upload_mb} MB)") from None
    except BaseException:
        files.remove_job(job_id)
        raise
    return rel, digest
