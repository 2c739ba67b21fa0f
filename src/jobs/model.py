"""The job: its statuses, its stored document (flat) and its JSON view."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


JOB_ID = re.compile(r"[0-9a-f]{22}")


def new_job_id() -> str:
    """Time-ordered id (ms since epoch + randomness): sorting by id is sorting by age."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(5)}"


def _iso(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class Progress(BaseModel):
    rows_done: int = 0
    rows_total: int | None = Field(
        None, description="Estimated from bytes read while running; exact once done."
    )
    bytes_done: int = 0
    bytes_total: int | None = None
    parts_total: int | None = Field(
        None, description="A large input is cleaned in parts by several workers: how many."
    )
    parts_done: int | None = Field(None, description="Parts cleaned so far (then one merge).")


class Job(BaseModel):
    """What the API shows of a job (and what callbacks receive)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    attempts: int = 0
    error: str | None = None
    report: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    input_name: str | None = None
    output_format: str = "csv"
    cancel_requested: bool = False
    callback_url: str | None = None
    callback_status: str | None = None
    callback_error: str | None = None
    result_url: str | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        status = JobStatus(doc["status"])
        return cls(
            id=doc["_id"],
            status=status,
            created_at=_iso(doc["created_ts"]),
            started_at=_iso(doc.get("started_ts")),
            finished_at=_iso(doc.get("finished_ts")),
            progress=Progress(
                rows_done=doc.get("rows_done") or 0,
                rows_total=doc.get("rows_total") or _estimate(doc),
                bytes_done=doc.get("bytes_done") or 0,
                bytes_total=doc.get("bytes_total"),
                parts_total=doc.get("parts_total"),
                parts_done=doc.get("parts_done"),
            ),
            attempts=doc.get("attempts") or 0,
            error=doc.get("error"),
            report=doc.get("report"),
            options=doc.get("options") or {},
            input_name=doc.get("input_name"),
            output_format=doc.get("output_format", "csv"),
            cancel_requested=bool(doc.get("cancel_requested")),
            callback_url=doc.get("callback_url"),
            callback_status=doc.get("callback_status"),
            callback_error=doc.get("callback_error"),
            result_url=f"/jobs/{doc['_id']}/result" if status == JobStatus.SUCCEEDED else None,
        )


def _estimate(doc: dict[str, Any]) -> int | None:
    """Rows in the whole input, from the share of bytes read (split jobs report only sums)."""
    rows, done, total = doc.get("rows_done"), doc.get("bytes_done"), doc.get("bytes_total")
    if not rows or not done or not total:
        return None
    return rows * total // done


def new_job_doc(
    *,
    job_id: str,
    input_relpath: str,
    input_name: str,
    options: dict[str, Any],
    output_format: str,
    retention_hours: float,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    callback_url: str | None = None,
    owns_input: bool = True,
) -> dict[str, Any]:
    """The stored document of a new queued job. Flat: no arrays, one level of fields.

    Times are epoch seconds (floats): the test store keeps `$set` datetimes as
    strings. `expires_at` is the one datetime (a TTL index needs one) and is
    written only at insert.
    """
    now = time.time()
    doc: dict[str, Any] = {
        "_id": job_id,
        "status": JobStatus.QUEUED.value,
        "created_ts": now,
        "created_at": datetime.fromtimestamp(now, UTC),
        "expires_at": datetime.fromtimestamp(now + retention_hours * 3600, UTC),
        "expires_ts": now + retention_hours * 3600,
        "sent_ts": now,
        "attempts": 0,
        "rows_done": 0,
        "input": input_relpath,
        "input_name": input_name,
        "owns_input": owns_input,
        "options": options,
        "output_format": output_format,
        "cancel_requested": False,
    }
    # Sparse unique index: the field is absent, never null, when no key is given.
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
        doc["request_hash"] = request_hash
    if callback_url is not None:
        doc["callback_url"] = callback_url
    return doc


def part_id(job_id: str, index: int) -> str:
    return f"{job_id}.{index:05d}"


def new_part_doc(job: dict[str, Any], index: int, start: int, end: int) -> dict[str, Any]:
    """One part of a split job: a byte range of its input, claimed like a job."""
    now = time.time()
    return {
        "_id": part_id(job["_id"], index),
        "job_id": job["_id"],
        "index": index,
        "start": start,
        "end": end,
        "status": JobStatus.QUEUED.value,
        "created_ts": now,
        "sent_ts": now,
        "attempts": 0,
        "rows_done": 0,
        "bytes_done": 0,
        "expires_at": datetime.fromtimestamp(job["expires_ts"], UTC),
        "expires_ts": job["expires_ts"],
    }
