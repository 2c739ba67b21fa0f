"""Running one job and sweeping the collection: plain functions, testable without Celery.

The worker's tasks are a thin layer over these. Requires the engine (pandas,
polars): the API never imports this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
from pymongo.errors import PyMongoError

from src.core import storage
from src.core.config import Settings
from src.data.io import InputError
from src.data.options import CleaningOptions
from src.data.pipeline import Progress, clean_file
from src.jobs import rules
from src.jobs.model import Job, JobStatus
from src.jobs.store import JobStore

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    DONE = "done"  # this call brought the job to a terminal status
    BUSY = "busy"  # another live worker runs it: try again later
    GONE = "gone"  # nothing to do: unknown, already finished, or claimed away


class JobCancelled(Exception):
    """Raised between chunks when a cancel was asked."""


class ClaimLost(Exception):
    """Raised between chunks when the job is no longer ours (requeued by the sweep)."""


class JobEvents:
    """What happened to a job, for whoever watches (the worker records metrics from it).

    The default does nothing; `src.jobs` knows no metrics library.
    """

    def claimed(self, doc: dict[str, Any]) -> None:
        """This worker claimed the job (`doc` as stored after the claim)."""

    def progressed(self, job_id: str, rows_done: int, bytes_done: int) -> None:
        """A chunk was cleaned; totals so far for this attempt."""

    def finished(self, doc: dict[str, Any]) -> None:
        """This worker brought the job to a final status (`doc` as stored after it)."""


class Heartbeat:
    """Tells the store this worker is alive, from a thread, even during a long chunk."""

    def __init__(self, store: JobStore, job_id: str, worker: str, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, job_id, worker, every), daemon=True
        )

    def _run(self, store: JobStore, job_id: str, worker: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not store.heartbeat(job_id, worker):
                    return
            except PyMongoError as exc:  # the store may come back; keep trying
                log.warning("heartbeat for job %s failed: %s", job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_job(
    store: JobStore,
    settings: Settings,
    job_id: str,
    worker: str,
    events: JobEvents | None = None,
) -> Outcome:
    """Claim the job, clean its input chunk by chunk, and end it with a terminal status."""
    events = events or JobEvents()
    stale_before = time.time() - settings.stale_after_seconds
    cap = settings.max_attempts
    # The common case costs one round trip: the claim. The rest runs when it misses.
    claimed = store.claim(job_id, worker, stale_before, cap)
    if claimed is None:
        reason = (
            f"the worker running this job was lost {cap} times (redelivery cap {cap}); "
            "the input may crash the cleaner or exceed the worker's memory"
        )
        for expected in (
            rules.exhausted_queued(job_id, cap),
            rules.exhausted_stale(job_id, cap, stale_before),
        ):
            if finished := store.finish(job_id, expected, JobStatus.FAILED, error=reason):
                log.error("job %s failed: %s", job_id, reason)
                _finished(events, finished)
                return Outcome.DONE
        doc = store.get(job_id)
        if doc is not None and doc["status"] == JobStatus.RUNNING.value:
            return Outcome.BUSY
        state = "unknown" if doc is None else doc["status"]
        log.info("job %s: nothing to do (%s)", job_id, state)
        return Outcome.GONE
    log.info("job %s: claimed by %s (attempt %s)", job_id, worker, claimed["attempts"])
    _notify(events.claimed, claimed)
    with Heartbeat(store, job_id, worker, settings.heartbeat_seconds):
        return _clean(store, settings, claimed, worker, events)


def _clean(
    store: JobStore, settings: Settings, doc: dict[str, Any], worker: str, events: JobEvents
) -> Outcome:
    job_id = doc["_id"]
    owned = rules.owned(job_id, worker)
    fmt = doc.get("output_format", "csv")
    result_rel = storage.result_relpath(job_id, fmt)

    def on_progress(p: Progress) -> None:
        estimate = p.rows_done * p.bytes_total // p.bytes_done if p.bytes_done else None
        current = store.progress(job_id, worker, p.rows_done, estimate, p.bytes_done, p.bytes_total)
        if current is None:
            raise ClaimLost
        _notify(events.progressed, job_id, p.rows_done, p.bytes_done)
        if current.get("cancel_requested"):
            raise JobCancelled

    storage.remove_partial_results(settings.data_dir, job_id)
    try:
        options = CleaningOptions.model_validate(doc.get("options") or {})
        report = clean_file(
            settings.data_dir / doc["input"],
            settings.data_dir / result_rel,
            options,
            fmt=fmt,
            on_progress=on_progress,
        )
    except JobCancelled:
        finished = store.finish(job_id, owned, JobStatus.CANCELLED, error="cancelled by request")
        log.info("job %s: cancelled", job_id)
        _finished(events, finished)
        return Outcome.DONE
    except ClaimLost:
        log.warning("job %s: claim lost (requeued or cancelled elsewhere); stopping", job_id)
        return Outcome.GONE
    except InputError as exc:
        finished = store.finish(job_id, owned, JobStatus.FAILED, error=str(exc))
        log.info("job %s: failed on its input: %s", job_id, exc)
        _finished(events, finished)
        return Outcome.DONE
    except PyMongoError:
        raise  # transient: the task retries with backoff
    except Exception as exc:  # a readable error on the job; the worker lives on
        log.exception("job %s: unexpected error", job_id)
        finished = store.finish(
            job_id, owned, JobStatus.FAILED, error=f"internal error: {type(exc).__name__}: {exc}"
        )
        _finished(events, finished)
        return Outcome.DONE
    done = store.finish(
        job_id,
        owned,
        JobStatus.SUCCEEDED,
        # paths inside the worker mean nothing to the client: name the files instead
        report=report.model_copy(
            update={"input": doc.get("input_name"), "output": result_rel}
        ).model_dump(mode="json"),
        result=result_rel,
        rows_done=report.rows_in,
        rows_total=report.rows_in,
    )
    log.info("job %s: %s, %s rows", job_id, "succeeded" if done else "claim lost", report.rows_in)
    _finished(events, done)
    return Outcome.DONE if done else Outcome.GONE


def _finished(events: JobEvents, doc: dict[str, Any] | None) -> None:
    """Report a final status this worker set (None: the compare-and-set missed)."""
    if doc is not None:
        _notify(events.finished, doc)


def _notify(handler: Callable[..., None], *args: Any) -> None:
    try:
        handler(*args)
    except Exception:  # an observer never changes what happens to the job
        log.exception("job event handler %s failed", getattr(handler, "__name__", handler))


@dataclass
class SweepResult:
    requeued: list[str]
    resent: list[str]
    expired: list[str]


def sweep(store: JobStore, settings: Settings, send: Callable[[str], None]) -> SweepResult:
    """Requeue jobs whose worker died, resend tasks that may be lost, expire old jobs."""
    now = time.time()
    stale_before = now - settings.stale_after_seconds
    result = SweepResult([], [], [])
    for job_id in store.ids(rules.stale_running(stale_before)):
        if store.requeue(job_id, stale_before):
            send(job_id)
            result.requeued.append(job_id)
    sent_before = now - settings.requeue_queued_after_seconds
    for job_id in store.ids(rules.old_queued(sent_before)):
        if store.mark_resent(job_id, sent_before):
            send(job_id)
            result.resent.append(job_id)
    for job_id in store.ids(rules.expired(now)):
        storage.remove_job_files(settings.data_dir, job_id)
        store.delete(job_id)
        result.expired.append(job_id)
    if any((result.requeued, result.resent, result.expired)):
        log.info("sweep: %s", result)
    return result


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
    store.set_fields(job_id, callback_status="delivered", callback_error=None)
    return True
