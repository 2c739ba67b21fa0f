"""A whole job: claim it, then clean its input chunk by chunk, or split it into parts.

Requires the engine (pandas, polars): the API never imports this module.
"""

from __future__ import annotations

import logging

from src.data import pipeline
from src.data.options import CleaningOptions
from src.data.pipeline import Progress
from src.data.report import CleaningReport
from src.jobs import layout, parts
from src.jobs.context import (
    ClaimLost,
    JobCancelled,
    JobContext,
    Outcome,
    notify,
    time_limit_error,
)
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc

log = logging.getLogger(__name__)


def run_job(ctx: JobContext, job_id: str) -> Outcome:
    """Claim the job, clean its input, and end it with a terminal status.

    A CSV input above SPLIT_ABOVE_MB is cut into parts instead (when the context
    can queue them): the parts and a merge finish the job.
    """
    stale_before = ctx.stale_before()
    # The common case costs one round trip: the claim. The rest runs when it misses.
    claimed = ctx.store.claim(
        job_id, ctx.worker, stale_before, ctx.settings.max_attempts, ctx.time_limit
    )
    if claimed is None:
        return _not_claimed(ctx, job_id, stale_before)
    log.info("job %s: claimed by %s (attempt %s)", job_id, ctx.worker, claimed["attempts"])
    notify(ctx.events.claimed, claimed)
    with ctx.heartbeat(ctx.store, job_id, deadline=claimed.get("deadline_ts")):
        ranges = parts.plan(ctx, claimed) if ctx.senders else None
        if not ranges:
            return _clean(ctx, claimed)
    return parts.start(ctx, claimed, ranges)


def _not_claimed(ctx: JobContext, job_id: str, stale_before: float) -> Outcome:
    """Fail it if its run went silent past its deadline, or its workers kept dying; else
    say whether someone else holds it."""
    timed_out = time_limit_error(ctx.time_limit)
    if finished := ctx.store.fail_timed_out(job_id, stale_before, timed_out):
        log.error("job %s failed: %s", job_id, timed_out)
        ctx.finished(finished)
        return Outcome.DONE
    cap = ctx.settings.max_attempts
    reason = (
        f"the worker running this job was lost {cap} times (redelivery cap {cap}); "
        "the input may crash the cleaner or exceed the worker's memory"
    )
    if finished := ctx.store.fail_exhausted(job_id, cap, stale_before, reason):
        log.error("job %s failed: %s", job_id, reason)
        ctx.finished(finished)
        return Outcome.DONE
    doc = ctx.store.get(job_id)
    if doc is not None and doc.get("parts_total"):
        return Outcome.GONE  # split: its parts and merge carry it
    if doc is not None and doc["status"] == JobStatus.RUNNING:
        return Outcome.BUSY
    log.info("job %s: nothing to do (%s)", job_id, "unknown" if doc is None else doc["status"])
    return Outcome.GONE


def _clean(ctx: JobContext, doc: JobDoc) -> Outcome:
    job_id, store, worker = doc["_id"], ctx.store, ctx.worker
    result_rel = layout.result_relpath(job_id, doc["output_format"])

    def on_progress(p: Progress) -> None:
        estimate = p.rows_done * p.bytes_total // p.bytes_done if p.bytes_done else None
        current = store.progress(job_id, worker, p.rows_done, estimate, p.bytes_done, p.bytes_total)
        if current is None:
            raise ClaimLost
        notify(ctx.events.progressed, job_id, p.rows_done, p.bytes_done)
        if current.get("cancel_requested"):
            raise JobCancelled
        ctx.check_time(doc.get("deadline_ts"))

    def clean() -> tuple[CleaningReport, int]:
        options = CleaningOptions.model_validate(doc["options"])
        with ctx.files.fetch(doc["input"]) as source, ctx.files.publish(result_rel) as target:
            report = pipeline.clean_file(
                source, target, options, fmt=doc["output_format"], on_progress=on_progress
            )
            return report, target.stat().st_size

    def end(status: JobStatus | None, error: str) -> Outcome:
        if status is None:
            log.warning("job %s: claim lost (requeued or cancelled elsewhere); stopping", job_id)
            return Outcome.GONE
        log.info("job %s: %s: %s", job_id, status, error)
        ctx.finished(store.finish_owned(job_id, worker, status, error=error))
        return Outcome.DONE

    layout.discard_abandoned(ctx.files, job_id)
    cleaned = ctx.attempt(clean, end)
    if isinstance(cleaned, Outcome):
        return cleaned
    report, result_bytes = cleaned
    done = store.finish_owned(
        job_id,
        worker,
        JobStatus.SUCCEEDED,
        # paths inside the worker mean nothing to the client: name the files instead
        report=report.model_copy(
            update={"input": doc["input_name"], "output": result_rel}
        ).model_dump(mode="json"),
        result=result_rel,
        result_bytes=result_bytes,
        rows_done=report.rows_in,
        rows_total=report.rows_in,
    )
    log.info("job %s: %s, %s rows", job_id, "succeeded" if done else "claim lost", report.rows_in)
    ctx.finished(done)
    return Outcome.DONE if done else Outcome.GONE
