"""The job state machine: which transition is allowed, as compare-and-set filters.

Both stores (async for the API, sync for the worker) build their MongoDB calls
from these functions, so the rules live here and nowhere else. No `$or`
(the test store mishandles it beside other keys), no arrays.
"""

from __future__ import annotations

from typing import Any

from src.jobs.model import JobStatus

Filter = dict[str, Any]
Update = dict[str, Any]

QUEUED, RUNNING = JobStatus.QUEUED, JobStatus.RUNNING


def claim_queued(job_id: str, cap: int) -> Filter:
    """A queued job with attempts left."""
    return {"_id": job_id, "status": QUEUED, "attempts": {"$lt": cap}}


def claim_stale(job_id: str, stale_before: float, cap: int | None = None) -> Filter:
    """A running job whose worker stopped its heartbeat (it died); with attempts left if `cap`."""
    found: Filter = {"_id": job_id, "status": RUNNING, "heartbeat_ts": {"$lt": stale_before}}
    if cap is not None:
        found["attempts"] = {"$lt": cap}
    return found


def exhausted_queued(job_id: str, cap: int) -> Filter:
    """A queued job that already used up its attempts (its workers kept dying)."""
    return {"_id": job_id, "status": QUEUED, "attempts": {"$gte": cap}}


def exhausted_stale(job_id: str, cap: int, stale_before: float) -> Filter:
    return {**claim_stale(job_id, stale_before), "attempts": {"$gte": cap}}


def before_deadline(found: Filter, now: float, field: str = "deadline_ts") -> list[Filter]:
    """`found`, if not past its deadline: filters to try in turn, since `$or` is out.

    The deadline is ahead, or there is none: `None` also matches a missing field (a
    merge not claimed yet, a record claimed before time limits existed).
    """
    return [{**found, field: {"$gt": now}}, {**found, field: None}]


def timed_out(job_id: str, stale_before: float, now: float) -> Filter:
    """A running record silent past its deadline: its run ran out of time (a hard time
    limit killed it, or its heartbeat gave up), so it never runs again: it fails."""
    return {**claim_stale(job_id, stale_before), "deadline_ts": {"$lt": now}}


def resend_timed_out(job_id: str, stale_before: float, now: float) -> Filter:
    """A timed-out record whose task was not sent in the last stale period: the sweep sends
    one, whose claim fails it (the task path also delivers its callback)."""
    return {**timed_out(job_id, stale_before, now), "sent_ts": {"$lt": stale_before}}


def claim_update(now: float, worker: str, time_limit: float) -> Update:
    """queued (or lost) → running for this worker; this run may last `time_limit` seconds."""
    return {
        "$set": {
            "status": RUNNING,
            "started_ts": now,
            "heartbeat_ts": now,
            "deadline_ts": now + time_limit,
            "worker": worker,
            "rows_done": 0,
            "bytes_done": 0,
        },
        "$inc": {"attempts": 1},
    }


def owned(job_id: str, worker: str) -> Filter:
    """The running job as claimed by this worker: updates from a stale claimant miss."""
    return {"_id": job_id, "status": RUNNING, "worker": worker}


def progress_update(
    now: float, rows_done: int, rows_total: int | None, bytes_done: int, bytes_total: int
) -> Update:
    return {
        "$set": {
            "heartbeat_ts": now,
            "rows_done": rows_done,
            "rows_total": rows_total,
            "bytes_done": bytes_done,
            "bytes_total": bytes_total,
        }
    }


def finish_update(status: JobStatus, now: float, **fields: Any) -> Update:
    return {"$set": {"status": status, "finished_ts": now, **fields}}


# A split job's own heartbeat: never stale. Its liveness is its parts' (each has a
# heartbeat) and its merge's (`merge_ts`), so the sweep never requeues it whole.
SPLIT_HEARTBEAT = 1e15


def split_update(parts_total: int, bytes_total: int) -> Update:
    return {
        "$set": {
            "parts_total": parts_total,
            "parts_done": 0,
            "heartbeat_ts": SPLIT_HEARTBEAT,
            "deadline_ts": SPLIT_HEARTBEAT,  # each part, and the merge, has its own
            "merge_ts": 0.0,
            "rows_done": 0,
            "bytes_done": 0,
            "bytes_total": bytes_total,
        }
    }


def running(job_id: str) -> Filter:
    return {"_id": job_id, "status": RUNNING}


def merge_free(job_id: str, stale_before: float) -> Filter:
    """A split job nobody merges: never started (merge_ts 0) or its merger went silent."""
    return {"_id": job_id, "status": RUNNING, "merge_ts": {"$lt": stale_before}}


def merge_claim_update(now: float, worker: str, time_limit: float) -> Update:
    return {
        "$set": {
            "merge_ts": now,
            "merge_started_ts": now,
            "merge_deadline_ts": now + time_limit,
            "worker": worker,
        }
    }


def stale_merge(stale_before: float) -> Filter:
    """Split jobs whose merger died (a merge that started and went silent)."""
    return {"status": RUNNING, "merge_ts": {"$gt": 0, "$lt": stale_before}}


def merge_timed_out(job_id: str, stale_before: float, now: float) -> Filter:
    """A split job whose merge went silent past its deadline: never merged again, it fails."""
    return {"_id": job_id, **stale_merge(stale_before), "merge_deadline_ts": {"$lt": now}}


def cancel_queued(job_id: str) -> Filter:
    return {"_id": job_id, "status": QUEUED}


def cancel_running(job_id: str) -> Filter:
    return running(job_id)


def requeue_update(now: float) -> Update:
    return {"$set": {"status": QUEUED, "worker": None, "sent_ts": now}}


def resend(job_id: str, sent_before: float) -> Filter:
    """A queued job whose task was sent long ago: it may have been lost, send it again."""
    return {"_id": job_id, "status": QUEUED, "sent_ts": {"$lt": sent_before}}


def stale_running(stale_before: float) -> Filter:
    return {"status": RUNNING, "heartbeat_ts": {"$lt": stale_before}}


def old_queued(sent_before: float) -> Filter:
    return {"status": QUEUED, "sent_ts": {"$lt": sent_before}}


def expired(now: float) -> Filter:
    return {"expires_ts": {"$lt": now}}


# MLflow tracking of finished jobs (src.jobs.tracking).
TERMINAL_STATUSES = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
TRACKING_OPEN = ["pending", "retrying"]  # TrackingStatus values still to be logged


def tracking_fields() -> dict[str, Any]:
    """Set with a job's final status when the service logs jobs to MLflow: whoever reads
    the finished job (a waiter, a callback) knows its run is coming."""
    return {
        "mlflow_status": "pending",
        "mlflow_attempts": 0,
        "mlflow_lease_ts": 0.0,
        "mlflow_retry_ts": 0.0,
    }


def tracking_unsent(job_id: str) -> Filter:
    """A finished job whose logging task was never sent (`mlflow_retry_ts` still 0)."""
    return {"_id": job_id, "mlflow_status": "pending", "mlflow_retry_ts": 0.0}


def tracking_free(job_id: str, now: float) -> Filter:
    """A job whose run is still to be logged, with no logging in progress."""
    return {"_id": job_id, "mlflow_status": {"$in": TRACKING_OPEN}, "mlflow_lease_ts": {"$lt": now}}


def tracking_due(now: float) -> Filter:
    """Jobs whose logging the sweep sends (again): lost, or its retry time has come."""
    return {"mlflow_status": {"$in": TRACKING_OPEN}, "mlflow_retry_ts": {"$lt": now}}
