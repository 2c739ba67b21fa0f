"""The job as users see it: its statuses and its JSON view (API responses, callbacks)."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from src.data.formats import DEFAULT_OUTPUT, OutputFormat
from src.data.options import CleaningOptions
from src.data.report import CleaningReport

if TYPE_CHECKING:
    from src.jobs.records import JobDoc


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CallbackStatus(StrEnum):
    RETRYING = "retrying"  # the endpoint refused or failed; the delivery is retried
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after CALLBACK_RETRIES


class TrackingStatus(StrEnum):
    """Where the job's MLflow run stands (MLFLOW_TRACKING_URI set)."""

    PENDING = "pending"  # finished; its run is being logged
    RETRYING = "retrying"  # MLflow failed; the sweep retries (MLFLOW_RETRIES)
    LOGGED = "logged"
    FAILED = "failed"  # given up: `mlflow_error` says why


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


JOB_ID = re.compile(r"[0-9a-f]{22}")


def new_job_id() -> str:
    """Time-ordered id (ms since epoch + randomness): sorting by id is sorting by age."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(5)}"


def _iso(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class JobProgress(BaseModel):
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
    progress: JobProgress = Field(default_factory=JobProgress)
    attempts: int = 0
    error: str | None = None
    report: CleaningReport | None = Field(None, description="Once succeeded: what changed.")
    options: CleaningOptions = Field(default_factory=CleaningOptions)
    input_name: str | None = None
    owner: str | None = Field(None, description="The name of the API key that created it.")
    output_format: OutputFormat = DEFAULT_OUTPUT
    cancel_requested: bool = False
    callback_url: str | None = None
    callback_status: CallbackStatus | None = None
    callback_error: str | None = None
    result_url: str | None = None
    mlflow_status: TrackingStatus | None = Field(
        None, description="The job's MLflow run, when the service logs jobs to MLflow."
    )
    mlflow_run_id: str | None = Field(None, description="The MLflow run of this job.")
    mlflow_run_url: str | None = Field(
        None, description="That run in MLflow's web UI (when MLFLOW_UI_URL is set)."
    )
    mlflow_error: str | None = Field(None, description="Why logging to MLflow failed.")

    @classmethod
    def from_doc(cls, doc: JobDoc) -> Job:
        status = JobStatus(doc["status"])
        return cls(
            id=doc["_id"],
            status=status,
            created_at=_iso(doc["created_ts"]),
            started_at=_iso(doc.get("started_ts")),
            finished_at=_iso(doc.get("finished_ts")),
            progress=JobProgress(
                rows_done=doc.get("rows_done") or 0,
                rows_total=doc.get("rows_total") or _estimate(doc),
                bytes_done=doc.get("bytes_done") or 0,
                bytes_total=doc.get("bytes_total"),
                parts_total=doc.get("parts_total"),
                parts_done=doc.get("parts_done"),
            ),
            attempts=doc.get("attempts") or 0,
            error=doc.get("error"),
            report=CleaningReport.model_validate(doc["report"]) if doc.get("report") else None,
            options=CleaningOptions.model_validate(doc.get("options") or {}),
            input_name=doc.get("input_name"),
            owner=doc.get("owner"),
            output_format=doc["output_format"],
            cancel_requested=bool(doc.get("cancel_requested")),
            callback_url=doc.get("callback_url"),
            callback_status=doc.get("callback_status"),
            callback_error=doc.get("callback_error"),
            result_url=f"/jobs/{doc['_id']}/result" if status == JobStatus.SUCCEEDED else None,
            mlflow_status=doc.get("mlflow_status"),
            mlflow_run_id=doc.get("mlflow_run_id"),
            mlflow_run_url=doc.get("mlflow_run_url"),
            mlflow_error=doc.get("mlflow_error"),
        )


def _estimate(doc: JobDoc) -> int | None:
    """Rows in the whole input, from the share of bytes read (split jobs report only sums)."""
    rows, done, total = doc.get("rows_done"), doc.get("bytes_done"), doc.get("bytes_total")
    if not rows or not done or not total:
        return None
    return rows * total // done
