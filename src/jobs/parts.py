"""Split jobs: a large CSV planned into byte ranges, each part cleaned by any worker.

Each part is claimed, heartbeaten and capped like a job, so a killed worker costs
one part. A finished part advances the merge (`src.jobs.merge`): its worker appends the
finished parts next in order, or, where parts cannot be appended as they come, the last
part to succeed queues one merge.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import PurePosixPath

from src.data import split
from src.data.formats import input_format
from src.data.io import SNIFF_BYTES, csv_head
from src.data.options import CleaningOptions
from src.jobs import layout, rules
from src.jobs.context import (
    ClaimLost,
    JobCancelled,
    JobContext,
    JobStopped,
    Outcome,
    Senders,
    notify,
    time_limit_error,
)
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc, PartDoc, new_part_doc

log = logging.getLogger(__name__)

Ranges = list[tuple[int, int]]


def plan(ctx: JobContext, doc: JobDoc) -> Ranges | None:
    """Byte ranges of the parts when this job should be split; None to run it whole."""
    rel = doc["input"]
    if input_format(PurePosixPath(rel)) != "csv":
        return None  # Parquet and JSON Lines run whole (their chunks stream anyway)
    size = ctx.files.size(rel) or 0
    if size <= ctx.settings.split_above_bytes:
        return None
    started = time.perf_counter()
    try:
        with ctx.files.fetch(rel) as local:
            found = split.plan_parts(local, ctx.settings.part_bytes)
    except OSError as exc:
        log.warning("job %s: not split (%s); running it whole", doc["_id"], exc)
        return None
    if found is None or len(found.ranges) < 2:
        log.info("job %s: not split (no safe record boundaries); running it whole", doc["_id"])
        return None
    log.info("job %s: planned in %.2f s", doc["_id"], time.perf_counter() - started)
    return found.ranges


def start(ctx: JobContext, doc: JobDoc, ranges: Ranges) -> Outcome:
    """Record the parts and queue them; the job stays running until the merge ends it."""
    job_id = doc["_id"]
    assert ctx.senders is not None  # only planned when parts can be queued
    docs = [new_part_doc(doc, i, begin, end) for i, (begin, end) in enumerate(ranges)]
    if not ctx.store.split(job_id, ctx.worker, docs, ranges[-1][1]):
        log.warning("job %s: claim lost while splitting", job_id)
        return Outcome.GONE
    notify(ctx.events.changed, job_id)
    for part in docs:
        ctx.senders.part(part["_id"])
    log.info("job %s: split into %s parts of ~%s bytes", job_id, len(docs), ctx.settings.part_bytes)
    return Outcome.DONE


def read_header(ctx: JobContext, rel: str, options: CleaningOptions) -> tuple[list[str], str]:
    """The input's header row and encoding, which every part and the merge need."""
    size = ctx.files.size(rel) or 0
    with (
        ctx.files.fetch_range(rel, 0, min(size, SNIFF_BYTES)) as (local, begin, end),
        local.open("rb") as fh,
    ):
        fh.seek(begin)
        return csv_head(fh.read(end - begin), options)


def end_split(
    ctx: JobContext,
    job_id: str,
    status: JobStatus,
    error: str,
    expected: rules.Filter | None = None,
) -> bool:
    """Fail or cancel a split job (whichever step sees it first); the others stop on
    their next chunk. From the state `expected` describes (default: running); True
    when this call ended it."""
    finished = ctx.store.finish(expected or rules.running(job_id), status, error=error)
    if finished is not None:
        log.info("job %s: %s: %s", job_id, status, error)
        ctx.finished(finished)
        layout.remove_parts(ctx.files, job_id)
    return finished is not None


def _senders(ctx: JobContext) -> Senders:
    if ctx.senders is None:
        raise RuntimeError("split-job steps need senders to queue the merge")
    return ctx.senders


# ---------------------------------------------------------------- one part
def run_part(ctx: JobContext, part: str) -> Outcome:
    """Clean one part of a split job; the last part to succeed queues the merge."""
    store, worker = ctx.store, ctx.worker
    stale_before = ctx.stale_before()
    before = store.parts.get(part)
    if before is None:
        return Outcome.GONE
    job_id = before["job_id"]
    claimed = store.parts.claim(
        part, worker, stale_before, ctx.settings.max_attempts, ctx.time_limit
    )
    if claimed is None:
        return _part_not_claimed(ctx, before, stale_before)
    job = store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING:
        store.parts.finish_owned(part, worker, JobStatus.CANCELLED, error="job ended")
        return Outcome.GONE
    if job.get("cancel_requested"):
        store.parts.finish_owned(part, worker, JobStatus.CANCELLED, error="cancelled")
        end_split(ctx, job_id, JobStatus.CANCELLED, "cancelled by request")
        return Outcome.DONE
    label = f"part {claimed['index'] + 1}/{job.get('parts_total')}"
    if before.get("rows_done") or before.get("bytes_done"):  # the lost attempt's progress
        store.add_split_progress(job_id, -before.get("rows_done", 0), -before.get("bytes_done", 0))
        notify(ctx.events.changed, job_id)
    log.info("job %s: %s claimed by %s (attempt %s)", job_id, label, worker, claimed["attempts"])
    size = claimed["end"] - claimed["start"]
    counted = [0, 0]
    reported = [time.monotonic()]

    def on_progress(rows_done: int, bytes_done: int) -> None:
        # Every HEARTBEAT_SECONDS at most: a large job has many parts on few cores, and
        # the store's work is theirs to share (the heartbeat thread keeps the claim alive).
        if time.monotonic() - reported[0] < ctx.settings.heartbeat_seconds:
            return
        reported[0] = time.monotonic()
        if store.parts.progress(part, worker, rows_done, None, bytes_done, size) is None:
            raise ClaimLost
        current = store.add_split_progress(job_id, rows_done - counted[0], bytes_done - counted[1])
        counted[:] = [rows_done, bytes_done]
        notify(ctx.events.progressed, part, rows_done, bytes_done)
        if current is None:
            raise JobStopped
        if current.get("cancel_requested"):
            raise JobCancelled
        ctx.check_time(claimed.get("deadline_ts"))

    def clean() -> split.PartResult:
        options = CleaningOptions.model_validate(job["options"])
        header, encoding = read_header(ctx, job["input"], options)
        fmt = job["output_format"]
        rows_rel, keys_rel = layout.part_relpaths(job_id, claimed["index"], fmt)
        with (
            ctx.files.fetch_range(job["input"], claimed["start"], claimed["end"]) as (
                local,
                begin,
                end,
            ),
            ctx.files.publish(rows_rel) as rows,
            ctx.files.publish(keys_rel) if keys_rel else contextlib.nullcontext() as keys,
        ):
            return split.clean_part(
                local, begin, end, header, encoding, options, fmt, rows, keys, on_progress
            )

    def end(status: JobStatus | None, error: str) -> Outcome:
        if status is None:
            store.parts.finish_owned(part, worker, JobStatus.CANCELLED, error=error)
            log.info("job %s: %s stopped: the job ended or the part was taken over", job_id, label)
            return Outcome.GONE
        store.parts.finish_owned(part, worker, status, error=error)
        end_split(ctx, job_id, status, error)
        return Outcome.DONE

    with ctx.heartbeat(store.parts, part, deadline=claimed.get("deadline_ts")):
        result = ctx.attempt(clean, end, where=f"in {label}")
    if isinstance(result, Outcome):
        return result
    done = store.parts.finish_owned(
        part,
        worker,
        JobStatus.SUCCEEDED,
        rows_done=result.rows,
        counts=result.counts,
        rows_bytes=result.nbytes,
    )
    if done is None:
        return Outcome.GONE
    job_now = store.add_split_progress(
        job_id, result.rows - counted[0], size - counted[1], parts_done=1
    )
    notify(ctx.events.changed, job_id)
    log.info("job %s: %s done, %s rows", job_id, label, result.rows)
    _merge_ready(ctx, job_id, job_now, claimed["index"])
    return Outcome.DONE


def _part_not_claimed(ctx: JobContext, before: PartDoc, stale_before: float) -> Outcome:
    part, job_id, cap = before["_id"], before["job_id"], ctx.settings.max_attempts
    timed_out = time_limit_error(ctx.time_limit, f"in part {before['index'] + 1}")
    if ctx.store.parts.fail_timed_out(part, stale_before, timed_out):
        log.error("job %s failed: %s", job_id, timed_out)
        end_split(ctx, job_id, JobStatus.FAILED, timed_out)
        return Outcome.DONE
    reason = (
        f"part {before['index'] + 1} of the input (bytes {before['start']:,}–{before['end']:,}) "
        f"lost its worker {cap} times (redelivery cap {cap}); "
        "those rows may crash the cleaner or exceed the worker's memory"
    )
    if ctx.store.parts.fail_exhausted(part, cap, stale_before, reason):
        log.error("job %s failed: %s", job_id, reason)
        end_split(ctx, job_id, JobStatus.FAILED, reason)
        return Outcome.DONE
    doc = ctx.store.parts.get(part)
    if doc is not None and doc["status"] == JobStatus.RUNNING:
        return Outcome.BUSY
    if doc is not None and doc["status"] == JobStatus.SUCCEEDED:
        # Its worker may have died before merging it: merging again is harmless.
        _merge_ready(ctx, job_id)
    return Outcome.GONE


def _merge_ready(
    ctx: JobContext, job_id: str, job: JobDoc | None = None, done: int | None = None
) -> None:
    """After a part is done: merge what is ready in order, here (files on a shared
    folder), or queue the merge once every part is done (`src.jobs.merge`)."""
    from src.jobs import merge  # it needs this module's helpers

    job = job or ctx.store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING:
        return
    if merge.incremental(ctx, job):
        if merge.next_part_ready(ctx, job, done):
            merge.advance(ctx, job_id)  # BUSY: the merger holding it looks again after
    elif ctx.store.parts_succeeded(job_id) == job.get("parts_total"):
        _senders(ctx).merge(job_id)
