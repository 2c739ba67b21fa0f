"""The last step of a split job: its cleaned parts, in order, into one result.

Duplicates are judged across parts with one run state, so the result is
byte-identical to a single run's. The merge is claimed by compare-and-set on
`merge_ts`, which is also its heartbeat: the sweep re-sends a merge gone silent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from src.data import split
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.jobs import layout, rules
from src.jobs.context import ClaimLost, JobCancelled, JobContext, Outcome, time_limit_error
from src.jobs.model import JobStatus
from src.jobs.parts import end_split, read_header
from src.jobs.records import JobDoc

log = logging.getLogger(__name__)
WHERE = "while merging parts"


def run_merge(ctx: JobContext, job_id: str) -> Outcome:
    """Merge a split job's cleaned parts into its result, in order, with one duplicate pass."""
    store, worker, files = ctx.store, ctx.worker, ctx.files
    stale_before = ctx.stale_before()
    job = store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING or not job.get("parts_total"):
        return Outcome.GONE
    parts = store.job_parts(job_id)
    if len(parts) != job.get("parts_total") or any(
        p["status"] != JobStatus.SUCCEEDED for p in parts
    ):
        return Outcome.GONE  # not ready: the last part to finish queues the merge again
    claimed = store.claim_merge(job_id, worker, stale_before, ctx.time_limit)
    if claimed is None:
        timed_out = rules.merge_timed_out(job_id, stale_before, time.time())
        reason = time_limit_error(ctx.time_limit, WHERE)
        if end_split(ctx, job_id, JobStatus.FAILED, reason, expected=timed_out):
            return Outcome.DONE  # its merge went silent past its deadline: never merged again
        current = store.get(job_id)
        fresh = current is not None and current["status"] == JobStatus.RUNNING
        return Outcome.BUSY if fresh else Outcome.GONE
    fmt = job["output_format"]
    result_rel = layout.result_relpath(job_id, fmt)

    def fetched() -> Iterator[tuple[Path, Path | None]]:
        for p in parts:
            rows_rel, keys_rel = layout.part_relpaths(job_id, p["index"], fmt)
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
        ctx.check_time(claimed.get("merge_deadline_ts"))

    def merge() -> tuple[CleaningReport, int]:
        options = CleaningOptions.model_validate(job["options"])
        header, encoding = read_header(ctx, job["input"], options)
        results = [
            split.PartResult(p.get("rows_done", 0), p.get("counts") or {}, p.get("rows_bytes", 0))
            for p in parts
        ]
        with files.publish(result_rel) as target:
            report = split.merge_parts(
                fetched(),
                results,
                target,
                options,
                fmt,
                header=header,
                on_part=on_part,
                input=job["input_name"],
                output=result_rel,
                input_format="csv",
                encoding=encoding,
            )
            return report, target.stat().st_size

    def end(status: JobStatus | None, error: str) -> Outcome:
        if status is None:
            return Outcome.GONE
        end_split(ctx, job_id, status, error)
        return Outcome.DONE

    log.info("job %s: merging %s parts (%s)", job_id, len(parts), worker)
    layout.discard_abandoned(files, job_id)  # a merger killed mid-write left its temp file
    with ctx.heartbeat(store, job_id, "merge_ts", claimed.get("merge_deadline_ts")):
        merged = ctx.attempt(merge, end, where=WHERE, readable=())
    if isinstance(merged, Outcome):
        return merged
    report, result_bytes = merged
    return _succeed(ctx, job, claimed, report, result_rel, result_bytes)


def _succeed(
    ctx: JobContext,
    job: JobDoc,
    claimed: JobDoc,
    report: CleaningReport,
    result_rel: str,
    result_bytes: int,
) -> Outcome:
    """End the split job with its merged result; its parts' files and records go."""
    job_id = job["_id"]
    elapsed = max(time.time() - job.get("started_ts", time.time()), 1e-6)
    report = report.model_copy(
        update={"duration_s": round(elapsed, 4), "rows_per_s": round(report.rows_in / elapsed, 1)}
    )
    done = ctx.store.finish_owned(
        job_id,
        ctx.worker,
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
        time.time() - claimed.get("merge_started_ts", time.time()),
    )
    ctx.finished(done)
    if done:
        layout.remove_parts(ctx.files, job_id)
        ctx.store.delete_parts(job_id)
    return Outcome.DONE if done else Outcome.GONE
