"""A split job's merge: its cleaned parts, in order, into one result.

Duplicates are judged across parts with one run state, so the result is
byte-identical to a single run's. The merge is claimed by compare-and-set on
`merge_ts`, which is also its heartbeat: the sweep re-sends a merge gone silent.

Where the job's files share a folder (DATA_DIR) and the result is CSV, the merge
goes as the parts finish (`advance`): the worker that finishes a part appends every
part that is next in order and done, so when the last part ends only its own rows
remain to append. The job document records how far it got (`merged_parts`,
`merged_bytes`); the duplicate state is rebuilt from the parts' keys files by
whoever takes over, and kept in memory between the steps of one process. Otherwise
(an object store, a Parquet result) one merge runs once every part is done.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from src.data import part_merge, split
from src.data.frame import RunState
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.jobs import layout, rules
from src.jobs.context import (
    ClaimLost,
    JobCancelled,
    JobContext,
    JobStopped,
    Outcome,
    time_limit_error,
)
from src.jobs.model import JobStatus
from src.jobs.parts import end_split, read_header
from src.jobs.records import JobDoc, part_id

log = logging.getLogger(__name__)
WHERE = "while merging parts"
PARTIAL = "merged.csv"  # the result being merged, among the parts (removed with them)
# Duplicate state of the merges this process holds, by job: (parts judged, state).
_states: dict[str, tuple[int, RunState]] = {}
KEPT_STATES = 4


def run_merge(ctx: JobContext, job_id: str) -> Outcome:
    """Merge a split job's cleaned parts into its result, in order, with one duplicate pass."""
    store, worker, files = ctx.store, ctx.worker, ctx.files
    stale_before = ctx.stale_before()
    job = store.get(job_id)
    if job is None or job["status"] != JobStatus.RUNNING or not job.get("parts_total"):
        return Outcome.GONE
    if incremental(ctx, job):
        return advance(ctx, job_id)  # sent by the sweep: its merger went silent
    parts = store.job_parts(job_id)
    if len(parts) != job.get("parts_total") or any(
        p["status"] != JobStatus.SUCCEEDED for p in parts
    ):
        return Outcome.GONE  # not ready: the last part to finish queues the merge again
    claimed = store.claim_merge(job_id, worker, stale_before, ctx.time_limit)
    if claimed is None:
        return _not_claimed(ctx, job_id, stale_before)
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
            report = part_merge.merge_parts(
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


def incremental(ctx: JobContext, job: JobDoc) -> bool:
    """Whether the job merges part by part as parts finish: a CSV result, files on a
    folder every worker shares (an object store cannot append)."""
    return job["output_format"] == "csv" and ctx.files.local_path(job["input"]) is not None


def next_part_ready(ctx: JobContext, job: JobDoc, done: int | None = None) -> bool:
    """Whether the part next in order to merge is done (so a merge step has work);
    `done`: the index of a part known to be done."""
    merged = job.get("merged_parts") or 0
    if merged == done:
        return True
    if merged >= job.get("parts_total", 0):
        return merged > 0  # all merged: the result is left to finish (a merger died)
    part = ctx.store.parts.get(part_id(job["_id"], merged))
    return part is not None and part["status"] == JobStatus.SUCCEEDED


def advance(ctx: JobContext, job_id: str) -> Outcome:
    """Claim the merge and append, in order, every part that is done; end the job when
    the last is in. BUSY when another live merger holds it (it looks again after it lets
    go, so no finished part is left waiting).
    """
    while True:
        stale_before = ctx.stale_before()
        claimed = ctx.store.claim_merge(job_id, ctx.worker, stale_before, ctx.time_limit)
        if claimed is None:
            return _not_claimed(ctx, job_id, stale_before)
        outcome = _step(ctx, claimed)
        if outcome is not None:
            return outcome
        # Let go; a part that finished meanwhile saw the claim held and left it to us.
        # No deadline while nobody merges (and one round trip for the next claim).
        released = ctx.store.update_where(
            rules.owned(job_id, ctx.worker), merge_ts=0.0, merge_deadline_ts=rules.SPLIT_HEARTBEAT
        )
        if released is None or not next_part_ready(ctx, released):
            return Outcome.DONE


def _not_claimed(ctx: JobContext, job_id: str, stale_before: float) -> Outcome:
    timed_out = rules.merge_timed_out(job_id, stale_before, time.time())
    reason = time_limit_error(ctx.time_limit, WHERE)
    if end_split(ctx, job_id, JobStatus.FAILED, reason, expected=timed_out):
        return Outcome.DONE  # its merge went silent past its deadline: never merged again
    current = ctx.store.get(job_id)
    fresh = current is not None and current["status"] == JobStatus.RUNNING
    return Outcome.BUSY if fresh else Outcome.GONE


def _step(ctx: JobContext, claimed: JobDoc) -> Outcome | None:
    """Append the parts that are done, in order, under the claim; the outcome when the
    job ended (or the claim was lost), None when parts are still to come."""
    store, worker, files = ctx.store, ctx.worker, ctx.files
    job_id, total = claimed["_id"], claimed.get("parts_total", 0)
    result_rel = layout.result_relpath(job_id, "csv")
    partial = files.local_path(f"{layout.parts_prefix(job_id)}/{PARTIAL}")
    result = files.local_path(result_rel)
    assert partial is not None and result is not None  # `incremental`
    options = CleaningOptions.model_validate(claimed["options"])

    def body() -> tuple[CleaningReport, int] | None:
        merged = claimed.get("merged_parts") or 0
        offset = claimed.get("merged_bytes") or 0
        # This process's state, if it judged no part the job has not merged; else anew.
        judged, state = _states.pop(job_id, (0, RunState()))
        if merged and not _partial_holds(partial, result, offset, merged == total):
            merged = offset = 0  # the file is gone: merge again
        if judged > merged:
            judged, state = 0, RunState()
        for index in range(judged, merged):  # what other processes merged
            part_merge.judge_part(_keys(ctx, job_id, index), state, ids=False)
        if merged == total and not partial.exists():
            return _finish(ctx, claimed, state, result, result_rel, offset)
        partial.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            first = merged
            parts = {p["index"]: p for p in store.job_parts(job_id)}
            status = {i: p["status"] for i, p in parts.items()}
            if offset == 0:
                header, _ = read_header(ctx, claimed["input"], options)
                line = io.BytesIO()
                part_merge.empty_frame(header).write_csv(line)  # as a single run writes it
                offset = os.pwrite(fd, line.getvalue(), 0)
            written = offset
            # Parts done as of now, in order; one finishing meanwhile sees the claim held
            # and leaves it to the re-check after it is let go (`advance`).
            while merged < total and status.get(merged) == JobStatus.SUCCEEDED:
                part = parts[merged]
                rows_rel, keys_rel = layout.part_relpaths(job_id, merged, "csv")
                assert keys_rel is not None
                with files.fetch(rows_rel) as rows, files.fetch(keys_rel) as keys:
                    part_merge.check_part_size(rows, part.get("rows_bytes", 0), merged)
                    runs = part_merge.judge_part(keys, state, rows, ids=False)
                    offset = part_merge.append_part(fd, offset, rows, runs)
                merged += 1
                current = store.update_where(
                    rules.owned(job_id, worker), merged_parts=merged, merged_bytes=offset
                )
                if current is None:
                    raise ClaimLost
                if current.get("cancel_requested"):
                    raise JobCancelled
                ctx.check_time(claimed.get("merge_deadline_ts"))
            if merged > first:
                log.info("job %s: parts %s–%s of %s merged", job_id, first + 1, merged, total)
            if merged < total:
                # Start writing what is merged to disk now (Linux: without waiting), so
                # the fsync at the end has only the last part left to wait for.
                os.posix_fadvise(fd, written, offset - written, os.POSIX_FADV_DONTNEED)
                _states[job_id] = (merged, state)  # kept only when whole: not on an error
                while len(_states) > KEPT_STATES:
                    _states.pop(next(iter(_states)))
                return None
            os.ftruncate(fd, offset)  # past it: a merger that died mid-part
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, result)
        return _finish(ctx, claimed, state, result, result_rel, offset)

    def end(status: JobStatus | None, error: str) -> Outcome:
        if status is None:
            return Outcome.GONE
        # Only the claim's holder ends the job: one that lost it leaves it to the taker.
        if end_split(ctx, job_id, status, error, expected=rules.owned(job_id, worker)):
            return Outcome.DONE
        return Outcome.GONE

    with ctx.heartbeat(store, job_id, "merge_ts", claimed.get("merge_deadline_ts")):
        done = ctx.attempt(body, end, where=WHERE, readable=())
    if done is None or isinstance(done, Outcome):
        return done
    report, result_bytes = done
    return _succeed(ctx, claimed, claimed, report, result_rel, result_bytes)


def _keys(ctx: JobContext, job_id: str, index: int) -> Path:
    _, keys_rel = layout.part_relpaths(job_id, index, "csv")
    assert keys_rel is not None
    path = ctx.files.local_path(keys_rel)
    if path is None or not path.exists():
        raise JobStopped  # the parts are gone: the job ended
    return path


def _partial_holds(partial: Path, result: Path, offset: int, complete: bool) -> bool:
    """Whether the merged bytes the job records are on disk (in the partial file, or
    already moved to the result by a merger that died before ending the job)."""
    with contextlib.suppress(FileNotFoundError):
        return partial.stat().st_size >= offset
    return complete and result.exists() and result.stat().st_size == offset


def _finish(
    ctx: JobContext,
    job: JobDoc,
    state: RunState,
    result: Path,
    result_rel: str,
    result_bytes: int,
) -> tuple[CleaningReport, int]:
    """The report of a merged job: the parts' counts and the duplicate state."""
    options = CleaningOptions.model_validate(job["options"])
    _, encoding = read_header(ctx, job["input"], options)
    parts = ctx.store.job_parts(job["_id"])
    part_merge.count_duplicate_ids([_keys(ctx, job["_id"], p["index"]) for p in parts], state)
    part_merge.add_part_counts(
        state, (split.PartResult(p.get("rows_done", 0), p.get("counts") or {}) for p in parts)
    )
    report = part_merge.report(
        state,
        options,
        0.0,
        "csv",
        input=job["input_name"],
        output=result_rel,
        input_format="csv",
        encoding=encoding,
    )
    return report, result_bytes


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
