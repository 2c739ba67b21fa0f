"""The stored documents: one typed definition each for a job and a part of a split job.

Flat (no arrays, one level of fields): the test store mishandles `$push` of
sub-documents and `$set` on array paths. Times are epoch seconds (floats), since
the test store keeps `$set` datetimes as strings; `expires_at` is the one datetime
(a TTL index needs one) and is written only at insert.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Required, TypedDict

from src.data.formats import OutputFormat
from src.jobs.model import JobStatus


class Claimable(TypedDict, total=False):
    """What jobs and parts share: claimed by compare-and-set, heartbeaten, finished."""

    _id: Required[str]
    status: Required[str]  # a JobStatus value
    created_ts: Required[float]
    sent_ts: float  # when its task was (last) sent
    attempts: Required[int]
    worker: str | None  # "host:pid" of the claimant
    started_ts: float
    heartbeat_ts: float
    deadline_ts: float  # the claimed run's end: started + JOB_TIME_LIMIT_SECONDS
    finished_ts: float
    rows_done: int
    rows_total: int | None
    bytes_done: int
    bytes_total: int | None
    error: str | None
    expires_at: datetime
    expires_ts: Required[float]


class JobDoc(Claimable, total=False):
    """A job (collection `jobs`)."""

    created_at: datetime
    input: Required[str]  # storage key of the input
    input_name: Required[str]  # the file name the user gave
    input_sha256: str  # an upload's, hashed as it streamed in (absent for a `source`)
    owns_input: bool  # an upload (removed with the job), not a `source` of theirs
    options: Required[dict[str, Any]]  # CleaningOptions as JSON
    output_format: Required[OutputFormat]
    cancel_requested: bool
    owner: str | None  # the name of the API key that created it (None without API_KEYS)
    owner_hash: str | None  # sha256 of that key: what ownership is matched on
    idempotency_key: str  # "<owner_hash>:<key>"; absent, never null, without one (sparse index)
    request_hash: str | None
    callback_url: str
    callback_status: str | None
    callback_error: str | None
    report: dict[str, Any] | None  # CleaningReport as JSON
    result: str  # storage key of the result
    result_bytes: int
    # split jobs
    parts_total: int
    parts_done: int
    merge_ts: float  # the merger's heartbeat; 0 until a merge is claimed
    merge_started_ts: float
    merge_deadline_ts: float  # absent until a merge is claimed
    merged_parts: int  # parts appended in order so far (local results: merged as parts end)
    merged_bytes: int  # the merged file's length after them
    # MLflow tracking (absent while MLFLOW_TRACKING_URI is unset): see src.jobs.tracking
    mlflow_status: str  # a TrackingStatus value
    mlflow_attempts: int
    mlflow_retry_ts: float  # when the sweep sends the logging (again)
    mlflow_lease_ts: float  # a logging in progress holds the job until then; 0: none
    mlflow_error: str | None
    mlflow_run_id: str
    mlflow_experiment_id: str
    mlflow_run_url: str | None


class PartDoc(Claimable, total=False):
    """One part of a split job (collection `job_parts`): a byte range of its input."""

    job_id: Required[str]
    index: Required[int]
    start: Required[int]
    end: Required[int]
    counts: dict[str, Any]  # per-column counts, summed by the merge
    rows_bytes: int  # size of the part's rows file, checked by the merge


def new_job_doc(
    *,
    job_id: str,
    input_relpath: str,
    input_name: str,
    options: dict[str, Any],
    output_format: OutputFormat,
    retention_hours: float,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    callback_url: str | None = None,
    owns_input: bool = True,
    owner: str | None = None,
    owner_hash: str | None = None,
    input_sha256: str | None = None,
) -> JobDoc:
    """The stored document of a new queued job."""
    now = time.time()
    expires = now + retention_hours * 3600
    doc = JobDoc(
        _id=job_id,
        status=JobStatus.QUEUED,
        created_ts=now,
        created_at=datetime.fromtimestamp(now, UTC),
        expires_at=datetime.fromtimestamp(expires, UTC),
        expires_ts=expires,
        sent_ts=now,
        attempts=0,
        rows_done=0,
        input=input_relpath,
        input_name=input_name,
        owns_input=owns_input,
        options=options,
        output_format=output_format,
        cancel_requested=False,
        owner=owner,
        owner_hash=owner_hash,
    )
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
        doc["request_hash"] = request_hash
    if callback_url is not None:
        doc["callback_url"] = callback_url
    if input_sha256 is not None:
        doc["input_sha256"] = input_sha256
    return doc


def part_id(job_id: str, index: int) -> str:
    return f"{job_id}.{index:05d}"


def job_of_part(part: str) -> str:
    return part.partition(".")[0]


def new_part_doc(job: JobDoc, index: int, start: int, end: int) -> PartDoc:
    """One part of a split job, queued, expiring with its job."""
    now = time.time()
    return PartDoc(
        _id=part_id(job["_id"], index),
        job_id=job["_id"],
        index=index,
        start=start,
        end=end,
        status=JobStatus.QUEUED,
        created_ts=now,
        sent_ts=now,
        attempts=0,
        rows_done=0,
        bytes_done=0,
        expires_at=datetime.fromtimestamp(job["expires_ts"], UTC),
        expires_ts=job["expires_ts"],
    )
