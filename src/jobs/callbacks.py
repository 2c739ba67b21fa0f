"""Callbacks: the final job JSON POSTed to the `callback_url` a submission gave."""

from __future__ import annotations

import httpx

from src.jobs.model import CallbackStatus, Job
from src.jobs.store import JobStore


class CallbackFailed(Exception):
    """The callback endpoint did not accept the job; the task retries."""


def deliver_callback(store: JobStore, job_id: str, timeout: float = 10.0) -> bool:
    """POST the final job JSON to its callback_url; True when delivered."""
    doc = store.get(job_id)
    if doc is None or not doc.get("callback_url"):
        return False
    payload = Job.from_doc(doc).model_dump(mode="json")
    try:
        response = httpx.post(doc["callback_url"], json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        raise CallbackFailed(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 300:
        raise CallbackFailed(f"HTTP {response.status_code}")
    store.set_fields(job_id, callback_status=CallbackStatus.DELIVERED, callback_error=None)
    return True


def record_failure(store: JobStore, job_id: str, error: str, final: bool) -> None:
    """Show the delivery problem on the job: `retrying`, or `failed` once given up."""
    status = CallbackStatus.FAILED if final else CallbackStatus.RETRYING
    store.set_fields(job_id, callback_status=status, callback_error=error)
