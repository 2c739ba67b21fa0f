"""Time limits (JOB_TIME_LIMIT_SECONDS) on real workers: a run past its limit ends failed
with a reason that says so, its worker goes on to the next job, and nothing revives it.

Runs are held past the limit (tests/support/hold.py), never raced: reporting progress
(the run stops itself between chunks), stuck inside a chunk (Celery's soft limit stops
it), or wedged, deaf to the soft limit (the hard limit kills the pool process). Each test
starts its own one-process worker, so "the next job" runs where the late one ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from src.core.processes import pid_alive
from src.core.storage import open_storage
from src.jobs.context import JobContext, Outcome, Senders, time_limit_error
from src.jobs.merge import run_merge
from src.jobs.records import new_part_doc
from src.jobs.run import run_job
from src.jobs.store import JobStore
from src.jobs.sweep import sweep
from tests.integration.conftest import (
    api_client,
    settings_for,
    stack_or_skip,
    upload,
    wait_held,
    wait_job,
)
from tests.support.hold import HOLD_MODE_ENV, STUCK, WEDGED, held, held_pids
from tests.support.inputs import OPTIONS, job_doc, make_input
from tests.support.services import Stack, stop

LIMIT = 3.0  # JOB_TIME_LIMIT_SECONDS of this module's workers
TIMED_OUT = time_limit_error(LIMIT)  # a whole job's error


@pytest.fixture(scope="module")
def lstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("limits")
    with stack_or_skip(workdir, MONGO_DB="limits", JOB_TIME_LIMIT_SECONDS=f"{LIMIT:g}") as s:
        yield s


@pytest.fixture(scope="module")
def lapi(lstack: Stack) -> Iterator[httpx.Client]:
    with api_client(lstack) as client:
        yield client


def record(stack: Stack, job_id: str, collection: str = "jobs") -> dict:
    env = stack.env()
    with MongoClient(env["MONGO_URL"]) as mongo:
        return mongo[env["MONGO_DB"]][collection].find_one({"_id": job_id})


def pool_pid(stack: Stack, job_id: str) -> int:
    """The pool process that claimed the job (`worker` is `host:pid`)."""
    return int(record(stack, job_id)["worker"].rsplit(":", 1)[1])


def wait_stuck(client: httpx.Client, job_id: str, hold: Path) -> None:
    """Until a run of the job sits in the hold before its first chunk (no progress comes)."""
    deadline = time.monotonic() + 60
    while not held_pids(hold):
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), f"ended before the hold: {job}"
        assert time.monotonic() < deadline, f"never held: {job}"
        time.sleep(0.05)


def next_job_succeeds(client: httpx.Client, sample: Path) -> dict:
    done = wait_job(client, upload(client, sample).json()["id"], timeout=60)
    assert done["status"] == "succeeded", done
    return done


def test_a_run_reporting_progress_past_its_limit_fails_and_its_worker_goes_on(
    lstack: Stack, lapi: httpx.Client, sample_path: Path, tmp_path: Path
) -> None:
    """Held at a progress report (the heartbeat and progress keep coming), the run stops
    itself at its deadline, between chunks."""
    hold_file = tmp_path / "hold"
    worker = lstack.start_worker("limit-progress", concurrency=1, hold_file=hold_file)
    try:
        source = make_input(tmp_path / "long.csv")
        with held(hold_file):
            job_id = upload(lapi, source, OPTIONS.model_dump_json()).json()["id"]
            wait_held(lapi, job_id, hold_file)
            done = wait_job(lapi, job_id, timeout=60)  # the hold never let it go
        assert done["status"] == "failed", done
        assert done["error"] == TIMED_OUT
        assert done["attempts"] == 1
        assert lapi.get(f"/jobs/{job_id}/result").status_code == 409
        late_pid = pool_pid(lstack, job_id)
        following = next_job_succeeds(lapi, sample_path)
        assert pool_pid(lstack, following["id"]) == late_pid  # the same process, alive
    finally:
        stop(worker)


def test_a_run_stuck_inside_a_chunk_is_stopped_by_the_soft_limit(
    lstack: Stack, lapi: httpx.Client, sample_path: Path, tmp_path: Path
) -> None:
    """No progress callback ever comes (the heartbeat thread alone keeps it looking alive):
    Celery's soft time limit ends it, and its pool process runs the next job."""
    hold_file = tmp_path / "hold"
    worker = lstack.start_worker(
        "limit-stuck", concurrency=1, hold_file=hold_file, **{HOLD_MODE_ENV: STUCK}
    )
    try:
        with held(hold_file):
            job_id = upload(lapi, sample_path).json()["id"]
            wait_stuck(lapi, job_id, hold_file)
            done = wait_job(lapi, job_id, timeout=60)
        assert done["status"] == "failed", done
        assert done["error"] == TIMED_OUT
        assert done["progress"]["rows_done"] == 0 and done["attempts"] == 1
        log = (lstack.logs / "worker-limit-stuck.log").read_text()
        assert "Soft time limit" in log
        stuck_pid = pool_pid(lstack, job_id)
        following = next_job_succeeds(lapi, sample_path)
        assert pool_pid(lstack, following["id"]) == stuck_pid
    finally:
        stop(worker)


def test_a_wedged_run_is_killed_and_never_revived(
    lstack: Stack, lapi: httpx.Client, sample_path: Path, tmp_path: Path
) -> None:
    """Deaf to the soft limit (as native code would be), the run is killed by the hard
    limit and Celery starts another pool process. The record, left running with no
    heartbeat, is past its deadline: the sweep (beat, every second) never requeues it,
    and the task it sends fails it."""
    hold_file = tmp_path / "hold"
    worker = lstack.start_worker(
        "limit-wedged", concurrency=1, beat=True, hold_file=hold_file, **{HOLD_MODE_ENV: WEDGED}
    )
    try:
        with held(hold_file):
            job_id = upload(lapi, sample_path).json()["id"]
            wait_stuck(lapi, job_id, hold_file)
            wedged_pid = pool_pid(lstack, job_id)
            done = wait_job(lapi, job_id, timeout=90)  # only the kill got it out of the hold
            assert not pid_alive(wedged_pid)
        assert done["status"] == "failed", done
        assert done["error"] == TIMED_OUT
        assert done["attempts"] == 1  # never claimed again
        log = (lstack.logs / "worker-limit-wedged.log").read_text()
        assert "Hard time limit" in log
        assert f"job {job_id}: claimed by" in log and "(attempt 2)" not in log
        following = next_job_succeeds(lapi, sample_path)
        assert pool_pid(lstack, following["id"]) != wedged_pid  # its replacement
    finally:
        stop(worker)


def test_a_part_past_its_limit_fails_the_split_job_naming_it(
    lstack: Stack, lapi: httpx.Client, tmp_path: Path
) -> None:
    """Each part of a split job gets the limit: one held past it fails the job."""
    hold_file = tmp_path / "hold"
    worker = lstack.start_worker(
        "limit-split",
        concurrency=1,
        hold_file=hold_file,
        SPLIT_ABOVE_MB="0.05",
        PART_MB="0.02",
    )
    try:
        source = make_input(tmp_path / "split.csv", times=2)
        with held(hold_file):
            job_id = upload(lapi, source, OPTIONS.model_dump_json()).json()["id"]
            wait_held(lapi, job_id, hold_file)
            done = wait_job(lapi, job_id, timeout=60)
        assert done["status"] == "failed", done
        total = done["progress"]["parts_total"]
        assert total >= 2 and done["progress"]["parts_done"] < total
        assert done["error"].startswith("time limit exceeded in part "), done["error"]
        assert f"JOB_TIME_LIMIT_SECONDS ({LIMIT:g} s)" in done["error"]
        index = int(done["error"].split("in part ", 1)[1].split("/", 1)[0]) - 1
        part = record(lstack, f"{job_id}.{index:05d}", "job_parts")
        assert part["status"] == "failed" and part["error"] == done["error"]
        assert not (lstack.data_dir / "jobs" / job_id / "result.csv").exists()
    finally:
        stop(worker)


# ---------------------------------------------------------------- the sweep, driven here
@pytest.fixture
def direct(lstack: Stack) -> Iterator[tuple[JobContext, dict[str, list[str]]]]:
    """A context on the stack's store (JOB_TIME_LIMIT_SECONDS=3) whose senders record
    what they would queue: the sweep and the steps run here, without a worker."""
    settings = settings_for(lstack, job_time_limit_seconds=LIMIT)
    sent: dict[str, list[str]] = {"clean": [], "part": [], "merge": []}
    senders = Senders(sent["clean"].append, sent["part"].append, sent["merge"].append)
    store = JobStore(settings)
    yield JobContext(store, settings, open_storage(settings), "sweeper:1", senders), sent
    store.close()


def running_job(store: JobStore, **fields: object) -> str:
    doc = job_doc()
    job_id = doc["_id"]
    store.jobs.insert_one({**doc, "status": "running", "worker": "dead:1", **fields})
    return job_id


def test_the_sweep_never_requeues_a_record_past_its_deadline(
    direct: tuple[JobContext, dict[str, list[str]]],
) -> None:
    """Silent before its deadline: requeued (its worker was lost). Silent past it: its
    task is sent once a stale period, and its claim fails it."""
    ctx, sent = direct
    now = time.time()
    silent = {"attempts": 1, "heartbeat_ts": now - 60, "sent_ts": now - 120}
    lost = running_job(ctx.store, deadline_ts=now + 60, **silent)
    late = running_job(ctx.store, deadline_ts=now - 1, **silent)

    result = sweep(ctx)
    assert lost in result.requeued and late not in result.requeued
    assert late in result.timed_out and sent["clean"].count(late) == 1
    assert ctx.store.get(late)["status"] == "running"  # failed by its task, not here
    assert late not in sweep(ctx).timed_out  # sent once per stale period, not each pass

    assert run_job(ctx, late) is Outcome.DONE
    failed = ctx.store.get(late)
    assert failed["status"] == "failed" and failed["error"] == TIMED_OUT
    assert failed["attempts"] == 1
    assert late not in sweep(ctx).requeued and ctx.store.get(late)["status"] == "failed"


def test_a_merge_silent_past_its_deadline_fails_the_job(
    direct: tuple[JobContext, dict[str, list[str]]],
) -> None:
    """The sweep re-sends a merge that went silent; past its deadline, the merge fails
    the job instead of merging again."""
    ctx, sent = direct
    job_id = running_job(ctx.store, worker="planner:1")
    doc = ctx.store.get(job_id)
    parts = [new_part_doc(doc, i, i * 10, i * 10 + 10) for i in range(2)]
    assert ctx.store.split(job_id, "planner:1", parts, 20)
    ctx.store.parts.coll.update_many({"job_id": job_id}, {"$set": {"status": "succeeded"}})
    now = time.time()
    ctx.store.jobs.update_one(
        {"_id": job_id},
        {"$set": {"merge_ts": now - 60, "merge_deadline_ts": now - 1, "worker": "merger:1"}},
    )
    assert job_id in sweep(ctx).resent and sent["merge"] == [job_id]

    assert run_merge(ctx, job_id) is Outcome.DONE
    failed = ctx.store.get(job_id)
    assert failed["status"] == "failed"
    assert failed["error"] == time_limit_error(LIMIT, "while merging parts")
