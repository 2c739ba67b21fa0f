"""Running one job and sweeping the collection: plain functions, testable without Celery.

The worker's tasks are a thin layer over these. Requires the engine (pandas,
polars): the API never imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from pymongo.errors import PyMongoError

from src.core import storage
from src.core.config import Settings
from src.core.storage import Storage
from src.data.io import SNIFF_BYTES, InputError, csv_head, input_format
from src.data.options import CleaningOptions
from src.data.pipeline import Progress, clean_file
from src.data.split import PartResult, clean_part, merge_parts, plan_parts
from src.jobs import rules
from src.jobs.model import Job, JobStatus, new_part_doc
from src.jobs.store import JobStore, Records

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


@dataclass(frozen=True)
class Senders:
    """How tasks are queued (the worker passes Celery's); ids only, as always."""

    clean: Callable[[str], None]
    part: Callable[[str], None]
    merge: Callable[[str], None]


class Heartbeat:
    """Tells the store this worker is alive, from a thread, even during a long chunk."""

    def __init__(
        self,
        store: Records,
        job_id: str,
        worker: str,
        every: float,
        field: str = "heartbeat_ts",
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, job_id, worker, every, field), daemon=True
        )

    def _run(self, store: Records, job_id: str, worker: str, every: float, field: str) -> None:
        while not self._stop.wait(every):
            try:
                if not store.heartbeat(job_id, worker, field):
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
    files: Storage | None = None,
    senders: Senders | None = None,
) -> Outcome:
    """Claim the job, clean its input chunk by chunk, and end it with a terminal status.

    A CSV input above SPLIT_ABOVE_MB is cut into parts instead (when `senders`
    can queue them): the parts and a merge finish the job.
    """
    events = events or JobEvents()
    files = files or storage.open_storage(settings)
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
        if doc is not None and doc.get("parts_total"):
            return Outcome.GONE  # split: its parts and merge carry it
        if doc is not None and doc["status"] == JobStatus.RUNNING.value:
            return Outcome.BUSY
        state = "unknown" if doc is None else doc["status"]
        log.info("job %s: nothing to do (%s)", job_id, state)
        return Outcome.GONE
    log.info("job %s: claimed by %s (attempt %s)", job_id, worker, claimed["attempts"])
    _notify(events.claimed, claimed)
    with Heartbeat(store, job_id, worker, settings.heartbeat_seconds):
        ranges = _plan(files, settings, claimed) if senders else None
        if not ranges:
            return _clean(store, files, settings, claimed, worker, events)
    return _start_parts(store, settings, claimed, worker, ranges, senders, events)


def _clean(
    store: JobStore,
    files: Storage,
    settings: Settings,
    doc: dict[str, Any],
    worker: str,
    events: JobEvents,
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

    files.remove_partial_results(job_id)
    try:
        options = CleaningOptions.model_validate(doc.get("options") or {})
        with files.fetch(doc["input"]) as source, files.publish(result_rel) as target:
            report = clean_file(source, target, options, fmt=fmt, on_progress=on_progress)
            result_bytes = target.stat().st_size
    except JobCancelled:
        finished = store.finish(job_id, owned, JobStatus.CANCELLED, error="cancelled by request")
        log.info("job %s: cancelled", job_id)
        _finished(events, finished)
        return Outcome.DONE
    except ClaimLost:
        log.warning("job %s: claim lost (requeued or cancelled elsewhere); stopping", job_id)
        return Outcome.GONE
    except (InputError, FileNotFoundError) as exc:
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
        result_bytes=result_bytes,
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


# ---------------------------------------------------------------- split jobs
class JobStopped(Exception):
    """Raised in a part when its job ended meanwhile (failed, cancelled or expired)."""


def _plan(files: Storage, settings: Settings, doc: dict[str, Any]) -> list[tuple[int, int]] | None:
    """Byte ranges of the parts when this job should be split; None to run it whole."""
    rel = doc["input"]
    if input_format(PurePosixPath(rel)) != "csv":
        return None  # Parquet and JSON Lines run whole (their chunks stream anyway)
    size = files.size(rel) or 0
    if size <= settings.split_above_bytes:
        return None
    try:
        with files.fetch(rel) as local:
            plan = plan_parts(local, settings.part_bytes)
    except OSError as exc:
        log.warning("job %s: not split (%s); running it whole", doc["_id"], exc)
        return None
    if plan is None or len(plan.ranges) < 2:
        log.info("job %s: not split (no safe record boundaries); running it whole", doc["_id"])
        return None
    return plan.ranges


def _start_parts(
    store: JobStore,
    settings: Settings,
    doc: dict[str, Any],
    worker: str,
    ranges: list[tuple[int, int]],
    senders: Senders,
    events: JobEvents,
) -> Outcome:
    job_id = doc["_id"]
    parts = [new_part_doc(doc, i, start, end) for i, (start, end) in enumerate(ranges)]
    if not store.split(job_id, worker, parts, ranges[-1][1]):
        log.warning("job %s: claim lost while splitting", job_id)
        return Outcome.GONE
    for part in parts:
        senders.part(part["_id"])
    log.info("job %s: split into %s parts of ~%s bytes", job_id, len(parts), settings.part_bytes)
    return Outcome.DONE


def _header(files: Storage, rel: str, options: CleaningOptions) -> tuple[list[str], str]:
    size = files.size(rel) or 0
    with (
        files.fetch_range(rel, 0, min(size, SNIFF_BYTES)) as (local, start, end),
        local.open("rb") as fh,
    ):
        fh.seek(start)
        return csv_head(fh.read(end - start), options)


def run_part(
    store: JobStore,
    settings: Settings,
    part: str,
    worker: str,
    senders: Senders,
    files: Storage | None = None,
    events: JobEvents | None = None,
) -> Outcome:
    """Clean one part of a split job; the last part to succeed queues the merge.

    Claimed, heartbeaten and capped like a job: a killed worker costs this part only.
    """
    events = events or JobEvents()
    files = files or storage.open_storage(settings)
    stale_before = time.time() - settings.stale_after_seconds
    cap = settings.max_attempts
    before = store.parts.get(part)
    if before is None:
        return Outcome.GONE
    job_id = before["job_id"]
    claimed = store.parts.claim(part, worker, stale_before, cap)
    if claimed is None:
        return _part_not_claimed(store, files, settings, before, stale_before, senders, events)
    job = store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING.value:
        store.parts.finish(part, rules.owned(part, worker), JobStatus.CANCELLED, error="job ended")
        return Outcome.GONE
    if job.get("cancel_requested"):
        store.parts.finish(part, rules.owned(part, worker), JobStatus.CANCELLED, error="cancelled")
        _end_split(store, files, job_id, JobStatus.CANCELLED, "cancelled by request", events)
        return Outcome.DONE
    label = f"part {claimed['index'] + 1}/{job['parts_total']}"
    if before.get("rows_done") or before.get("bytes_done"):  # the lost attempt's progress
        store.add_split_progress(job_id, -before["rows_done"], -before["bytes_done"])
    log.info("job %s: %s claimed by %s (attempt %s)", job_id, label, worker, claimed["attempts"])
    counted = [0, 0]
    reported = [time.monotonic()]

    def on_progress(rows_done: int, bytes_done: int) -> None:
        # Every HEARTBEAT_SECONDS at most: a large job has many parts on few cores, and
        # the store's work is theirs to share (the heartbeat thread keeps the claim alive).
        if time.monotonic() - reported[0] < settings.heartbeat_seconds:
            return
        reported[0] = time.monotonic()
        size = claimed["end"] - claimed["start"]
        if store.parts.progress(part, worker, rows_done, None, bytes_done, size) is None:
            raise ClaimLost
        current = store.add_split_progress(job_id, rows_done - counted[0], bytes_done - counted[1])
        counted[:] = [rows_done, bytes_done]
        _notify(events.progressed, part, rows_done, bytes_done)
        if current is None:
            raise JobStopped
        if current.get("cancel_requested"):
            raise JobCancelled

    owned = rules.owned(part, worker)
    with Heartbeat(store.parts, part, worker, settings.heartbeat_seconds):
        try:
            options = CleaningOptions.model_validate(job.get("options") or {})
            header, encoding = _header(files, job["input"], options)
            span = (claimed["start"], claimed["end"])
            fmt = job.get("output_format", "csv")
            rows_rel, keys_rel = storage.part_relpaths(job_id, claimed["index"], fmt)
            with (
                files.fetch_range(job["input"], *span) as (local, start, end),
                files.publish(rows_rel) as rows,
                files.publish(keys_rel) if keys_rel else contextlib.nullcontext() as keys,
            ):
                result = clean_part(
                    local, start, end, header, encoding, options, fmt, rows, keys, on_progress
                )
        except JobCancelled:
            store.parts.finish(part, owned, JobStatus.CANCELLED, error="cancelled by request")
            _end_split(store, files, job_id, JobStatus.CANCELLED, "cancelled by request", events)
            return Outcome.DONE
        except (ClaimLost, JobStopped):
            store.parts.finish(part, owned, JobStatus.CANCELLED, error="job ended")
            log.info("job %s: %s stopped: the job ended or the part was taken over", job_id, label)
            return Outcome.GONE
        except InputError as exc:
            store.parts.finish(part, owned, JobStatus.FAILED, error=str(exc))
            _end_split(store, files, job_id, JobStatus.FAILED, f"{exc} (in {label})", events)
            return Outcome.DONE
        except PyMongoError:
            raise
        except Exception as exc:
            log.exception("job %s: %s: unexpected error", job_id, label)
            error = f"internal error in {label}: {type(exc).__name__}: {exc}"
            store.parts.finish(part, owned, JobStatus.FAILED, error=error)
            _end_split(store, files, job_id, JobStatus.FAILED, error, events)
            return Outcome.DONE
    done = store.parts.finish(
        part,
        owned,
        JobStatus.SUCCEEDED,
        rows_done=result.rows,
        counts=result.counts,
        rows_bytes=result.nbytes,
    )
    if done is None:
        return Outcome.GONE
    store.add_split_progress(
        job_id,
        result.rows - counted[0],
        claimed["end"] - claimed["start"] - counted[1],
        parts_done=1,
    )
    log.info("job %s: %s done, %s rows", job_id, label, result.rows)
    _merge_if_complete(store, job_id, senders)
    return Outcome.DONE


def _part_not_claimed(
    store: JobStore,
    files: Storage,
    settings: Settings,
    before: dict[str, Any],
    stale_before: float,
    senders: Senders,
    events: JobEvents,
) -> Outcome:
    part, job_id, cap = before["_id"], before["job_id"], settings.max_attempts
    reason = (
        f"part {before['index'] + 1} of the input (bytes {before['start']:,}–{before['end']:,}) "
        f"lost its worker {cap} times (redelivery cap {cap}); "
        "those rows may crash the cleaner or exceed the worker's memory"
    )
    for expected in (
        rules.exhausted_queued(part, cap),
        rules.exhausted_stale(part, cap, stale_before),
    ):
        if store.parts.finish(part, expected, JobStatus.FAILED, error=reason):
            log.error("job %s failed: %s", job_id, reason)
            _end_split(store, files, job_id, JobStatus.FAILED, reason, events)
            return Outcome.DONE
    doc = store.parts.get(part)
    if doc is not None and doc["status"] == JobStatus.RUNNING.value:
        return Outcome.BUSY
    if doc is not None and doc["status"] == JobStatus.SUCCEEDED.value:
        # Its worker may have died before queueing the merge: queueing it twice is harmless.
        _merge_if_complete(store, job_id, senders)
    return Outcome.GONE


def _merge_if_complete(store: JobStore, job_id: str, senders: Senders) -> None:
    job = store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING.value:
        return
    if store.parts_succeeded(job_id) == job["parts_total"]:
        senders.merge(job_id)


def _end_split(
    store: JobStore,
    files: Storage,
    job_id: str,
    status: JobStatus,
    error: str,
    events: JobEvents,
) -> None:
    """Fail or cancel a split job (whichever part sees it first); the others stop on
    their next chunk."""
    finished = store.finish(job_id, rules.running(job_id), status, error=error)
    if finished is not None:
        log.info("job %s: %s: %s", job_id, status.value, error)
        _finished(events, finished)
        files.remove_parts(job_id)


def run_merge(
    store: JobStore,
    settings: Settings,
    job_id: str,
    worker: str,
    files: Storage | None = None,
    events: JobEvents | None = None,
) -> Outcome:
    """Merge a split job's cleaned parts into its result, in order, with one duplicate pass."""
    events = events or JobEvents()
    files = files or storage.open_storage(settings)
    stale_before = time.time() - settings.stale_after_seconds
    job = store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING.value or not job.get("parts_total"):
        return Outcome.GONE
    parts = store.job_parts(job_id)
    if len(parts) != job["parts_total"] or any(
        p["status"] != JobStatus.SUCCEEDED.value for p in parts
    ):
        return Outcome.GONE  # not ready: the last part to finish queues the merge again
    claimed = store.claim_merge(job_id, worker, stale_before)
    if claimed is None:
        current = store.get(job_id)
        fresh = current and current["status"] == JobStatus.RUNNING.value
        return Outcome.BUSY if fresh else Outcome.GONE
    owned = rules.owned(job_id, worker)
    fmt = job.get("output_format", "csv")
    result_rel = storage.result_relpath(job_id, fmt)

    def fetched() -> Iterator[tuple[Path, Path | None]]:
        for p in parts:
            rows_rel, keys_rel = storage.part_relpaths(job_id, p["index"], fmt)
            with (
                files.fetch(rows_rel) as rows,
                files.fetch(keys_rel) if keys_rel else contextlib.nullcontext() as keys,
            ):
                yield rows, keys

    def on_part(_: int) -> None:
        current = store.get(job_id)
        if current is None or current.get("worker") != worker:
            raise ClaimLost
        if current.get("cancel_requested"):
            raise JobCancelled

    log.info("job %s: merging %s parts (%s)", job_id, len(parts), worker)
    files.remove_partial_results(job_id)  # a merger killed mid-write left its temp file
    with Heartbeat(store, job_id, worker, settings.heartbeat_seconds, field="merge_ts"):
        try:
            options = CleaningOptions.model_validate(job.get("options") or {})
            header, encoding = _header(files, job["input"], options)
            with files.publish(result_rel) as target:
                report = merge_parts(
                    fetched(),
                    [
                        PartResult(p["rows_done"], p.get("counts") or {}, p.get("rows_bytes") or 0)
                        for p in parts
                    ],
                    target,
                    options,
                    fmt,
                    header=header,
                    on_part=on_part,
                    input=job.get("input_name"),
                    output=result_rel,
                    input_format="csv",
                    encoding=encoding,
                )
                result_bytes = target.stat().st_size
        except JobCancelled:
            _end_split(store, files, job_id, JobStatus.CANCELLED, "cancelled by request", events)
            return Outcome.DONE
        except ClaimLost:
            return Outcome.GONE
        except PyMongoError:
            raise
        except Exception as exc:
            log.exception("job %s: merge failed", job_id)
            error = f"internal error while merging parts: {type(exc).__name__}: {exc}"
            _end_split(store, files, job_id, JobStatus.FAILED, error, events)
            return Outcome.DONE
    elapsed = max(time.time() - (job.get("started_ts") or time.time()), 1e-6)
    report = report.model_copy(
        update={
            "duration_s": round(elapsed, 4),
            "rows_per_s": round(report.rows_in / elapsed, 1),
        }
    )
    done = store.finish(
        job_id,
        owned,
        JobStatus.SUCCEEDED,
        report=report.model_dump(mode="json"),
        result=result_rel,
        result_bytes=result_bytes,
        rows_done=report.rows_in,
        rows_total=report.rows_in,
    )
    log.info(
        "job %s: %s, %s rows (merge %.1f s)",
        job_id,
        "succeeded" if done else "claim lost",
        report.rows_in,
        time.time() - claimed["merge_started_ts"],
    )
    _finished(events, done)
    if done:
        files.remove_parts(job_id)
        store.delete_parts(job_id)
    return Outcome.DONE if done else Outcome.GONE


@dataclass
class SweepResult:
    requeued: list[str]
    resent: list[str]
    expired: list[str]


def sweep(store: JobStore, settings: Settings, senders: Senders) -> SweepResult:
    """Requeue jobs and parts whose worker died, resend tasks that may be lost, expire old jobs."""
    files = storage.open_storage(settings)
    now = time.time()
    stale_before = now - settings.stale_after_seconds
    sent_before = now - settings.requeue_queued_after_seconds
    result = SweepResult([], [], [])
    for records, send in ((store, senders.clean), (store.parts, senders.part)):
        for record_id in records.ids(rules.stale_running(stale_before)):
            if records.requeue(record_id, stale_before):
                send(record_id)
                result.requeued.append(record_id)
        for record_id in records.ids(rules.old_queued(sent_before)):
            if records.mark_resent(record_id, sent_before):
                send(record_id)
                result.resent.append(record_id)
    for job_id in store.ids(rules.stale_merge(stale_before)):
        senders.merge(job_id)  # its merger died; the merge claim lets one take over
        result.resent.append(job_id)
    for job_id in store.ids(rules.expired(now)):
        files.remove_job(job_id)
        store.delete_parts(job_id)
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
