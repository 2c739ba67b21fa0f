"""One job, many workers: a large input cut into parts, cleaned anywhere, merged in order.

A tiny threshold (SPLIT_ABOVE_MB) makes the real sample a split job. Its result
must be byte-identical to a single run's, duplicates across parts included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from src.core.config import Settings
from src.core.storage import open_storage
from src.data.options import CleaningOptions
from src.data.pipeline import clean_file
from src.jobs.context import JobContext, Outcome, Senders
from src.jobs.parts import run_part
from src.jobs.records import new_part_doc
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
from tests.support.hold import held, held_pids
from tests.support.inputs import OPTIONS, job_doc, make_input
from tests.support.services import Stack, stop, wait_for

SPLIT_ENV = {"SPLIT_ABOVE_MB": "0.05", "PART_MB": "0.02"}  # the 400 kB sample: ~19 parts
REPORT_FIELDS = (
    "rows_in",
    "rows_out",
    "duplicate_rows_dropped",
    "duplicate_ids",
    "duplicate_id_examples",
    "formulas_neutralised",
    "columns",
    "encoding",
)


@pytest.fixture(scope="module")
def sstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_or_skip(tmp_path_factory.mktemp("split"), MONGO_DB="split", **SPLIT_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def sapi(sstack: Stack) -> Iterator[httpx.Client]:
    with api_client(sstack) as client:
        yield client


@pytest.fixture
def two_workers(sstack: Stack) -> Iterator[list[subprocess.Popen]]:
    """Two worker processes (one pool process each): parts go to whichever is free."""
    procs = [sstack.start_worker(f"split{i}", concurrency=1) for i in (1, 2)]
    yield procs
    for proc in procs:
        stop(proc)


def mongo(stack: Stack):
    env = stack.env()
    client = MongoClient(env["MONGO_URL"])
    return client, client[env["MONGO_DB"]]


def single_run(source: Path, target: Path, options: CleaningOptions) -> dict:
    return clean_file(source, target, options).model_dump(mode="json")


def assert_same_report(got: dict, expected: dict) -> None:
    for name in REPORT_FIELDS:
        assert got[name] == expected[name], name


@pytest.mark.parametrize(
    "options",
    [{}, {"lowercase": True, "drop_duplicates": True}],
    ids=["defaults", "lowercase-dedupe"],
)
def test_split_result_is_byte_identical_to_a_single_run(
    sstack: Stack,
    sapi: httpx.Client,
    two_workers: list[subprocess.Popen],
    sample_path: Path,
    tmp_path: Path,
    options: dict,
) -> None:
    r = upload(sapi, sample_path, json.dumps(options))
    assert r.status_code == 202, r.text
    done = wait_job(sapi, r.json()["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["progress"]["parts_total"] >= 10
    assert done["progress"]["parts_done"] == done["progress"]["parts_total"]
    assert done["progress"]["rows_done"] == done["progress"]["rows_total"] == 672

    expected = tmp_path / "expected.csv"
    report = single_run(sample_path, expected, CleaningOptions(**options))
    assert sapi.get(f"/jobs/{done['id']}/result").content == expected.read_bytes()
    assert_same_report(done["report"], report)
    # The parts were spread over both worker processes, then cleaned up.
    logs = [(sstack.logs / f"worker-split{i}.log").read_text() for i in (1, 2)]
    assert all(f"job {done['id']}: part" in log for log in logs)
    # The merger removes the parts just after it marks the job succeeded (had it removed
    # them first and then lost its claim, the merger taking over would find none): wait
    # for that state, not for a moment.
    folder = sstack.data_dir / "jobs" / done["id"]
    client, db = mongo(sstack)
    with client:
        wait_for(
            lambda: (
                sorted(p.name for p in folder.iterdir()) == ["input.csv", "result.csv"]
                and db["job_parts"].count_documents({"job_id": done["id"]}) == 0
            ),
            30,
            "the parts' files and records removed after the merge",
        )


def test_duplicates_across_parts_are_dropped_as_in_one_run(
    sapi: httpx.Client, two_workers: list[subprocess.Popen], sample_path: Path, tmp_path: Path
) -> None:
    source = make_input(tmp_path / "thrice.csv", times=3)
    options = CleaningOptions(drop_duplicates=True)
    r = upload(sapi, source, options.model_dump_json())
    done = wait_job(sapi, r.json()["id"], timeout=120)
    assert done["status"] == "succeeded", done

    expected = tmp_path / "expected.csv"
    report = single_run(source, expected, options)
    assert report["duplicate_rows_dropped"] >= 2 * 672 - 10  # the repeats, found across parts
    assert_same_report(done["report"], report)
    assert sapi.get(f"/jobs/{done['id']}/result").content == expected.read_bytes()


def test_bad_rows_in_one_part_fail_the_job_readably(
    sapi: httpx.Client, two_workers: list[subprocess.Popen], sample_path: Path, tmp_path: Path
) -> None:
    source = make_input(tmp_path / "ragged.csv", times=2)
    with source.open("a", encoding="utf-8") as fh:
        fh.write("1,2,3,4,5,6,7,8\n")  # eight fields where the header has five
    done = wait_job(sapi, upload(sapi, source).json()["id"], timeout=120)
    assert done["status"] == "failed"
    assert "ragged row" in done["error"] and "part" in done["error"], done["error"]
    assert sapi.get(f"/jobs/{done['id']}/result").status_code == 409


def test_cancel_stops_every_part(sstack: Stack, sapi: httpx.Client, tmp_path: Path) -> None:
    """The first part is held in flight (tests/support/hold.py): the cancel always finds
    the job running, and the held part still sees it at its next progress report."""
    hold_file = tmp_path / "hold"
    worker = sstack.start_worker("split-cancel", concurrency=1, hold_file=hold_file)
    try:
        source = make_input(tmp_path / "big.csv", times=10)
        with held(hold_file):
            job = upload(sapi, source, CleaningOptions(chunk_rows=50).model_dump_json()).json()
            wait_held(sapi, job["id"], hold_file)
            assert sapi.post(f"/jobs/{job['id']}/cancel").status_code in (200, 202)
            done = wait_job(sapi, job["id"], timeout=60)
        assert done["status"] == "cancelled"
        assert done["progress"]["parts_done"] < done["progress"]["parts_total"]
        client, db = mongo(sstack)
        with client:
            # Every part still queued when the cancel came ends without cleaning a row.
            deadline = time.monotonic() + 30
            while db["job_parts"].count_documents(
                {"job_id": job["id"], "status": {"$in": ["queued", "running"]}}
            ):
                assert time.monotonic() < deadline, "parts still pending after the cancel"
                time.sleep(0.1)
        assert not (sstack.data_dir / "jobs" / job["id"] / "result.csv").exists()
    finally:
        stop(worker)


def test_killed_worker_costs_one_part_not_the_job(
    sstack: Stack, sapi: httpx.Client, tmp_path: Path
) -> None:
    """SIGKILL the pool process of a running part: that part alone runs again."""
    env = {"PART_MB": "2"}  # 3 parts of ~3,400 rows, progress every HEARTBEAT_SECONDS
    hold_file = tmp_path / "hold"  # parts stay in flight while it exists: no race to catch one
    workers = [
        sstack.start_worker(f"split-kill{i}", concurrency=1, hold_file=hold_file, **env)
        for i in (1, 2)
    ]
    try:
        source = make_input(tmp_path / "kill.csv")
        expected = tmp_path / "expected.csv"
        clean_file(source, expected, OPTIONS)
        client, db = mongo(sstack)
        with client:
            with held(hold_file):
                job = upload(sapi, source, OPTIONS.model_dump_json()).json()
                deadline = time.monotonic() + 60
                while (
                    part := db["job_parts"].find_one(
                        {"job_id": job["id"], "status": "running", "rows_done": {"$gt": 0}}
                    )
                ) is None:
                    assert time.monotonic() < deadline, (
                        f"no part caught running; processes that held: {held_pids(hold_file)}"
                    )
                    time.sleep(0.02)
                os.kill(int(part["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
            done = wait_job(sapi, job["id"], timeout=180)
            assert done["status"] == "succeeded", done
            assert done["attempts"] == 1  # the job was never redone whole
            assert sapi.get(f"/jobs/{job['id']}/result").content == expected.read_bytes()
        logs = "".join((sstack.logs / f"worker-split-kill{i}.log").read_text() for i in (1, 2))
        label = f"part {part['index'] + 1}/{done['progress']['parts_total']}"
        assert f"job {job['id']}: {label} claimed by" in logs
        assert "(attempt 2)" in logs
        assert logs.count(f"job {job['id']}: part ") - logs.count(f"job {job['id']}: {label}") > 0
    finally:
        for proc in workers:
            stop(proc)


@pytest.fixture
def direct_store(sstack: Stack) -> Iterator[tuple[JobStore, Settings]]:
    """The stack's store and settings, for tests that drive `src.jobs` without a worker."""
    settings = settings_for(sstack)
    store = JobStore(settings)
    yield store, settings
    store.close()


def running_split_job(store: JobStore, parts: int) -> tuple[str, list[dict]]:
    """A job split into `parts` queued parts of 10 bytes, as a planner leaves it."""
    doc = job_doc()
    job_id = doc["_id"]
    store.jobs.insert_one({**doc, "status": "running", "worker": "planner:1"})
    docs = [new_part_doc(doc, i, i * 10, i * 10 + 10) for i in range(parts)]
    assert store.split(job_id, "planner:1", docs, parts * 10)
    return job_id, docs


def test_redelivery_cap_applies_per_part(direct_store: tuple[JobStore, Settings]) -> None:
    """A part whose workers kept dying fails the job, naming the part."""
    store, settings = direct_store
    job_id, (part,) = running_split_job(store, 1)
    store.parts.coll.update_one(
        {"_id": part["_id"]},
        {"$set": {"status": "running", "attempts": settings.max_attempts, "heartbeat_ts": 0}},
    )
    ctx = JobContext(store, settings, open_storage(settings), "w:2", Senders(print, print, print))
    assert run_part(ctx, part["_id"]) is Outcome.DONE
    job = store.get(job_id)
    assert job["status"] == "failed"
    assert "part 1 of the input" in job["error"] and "redelivery cap" in job["error"]


def test_sweep_requeues_a_silent_part_and_resends_a_dead_merge(
    direct_store: tuple[JobStore, Settings],
) -> None:
    """A part whose worker went silent is queued again; so is a merge whose merger died."""
    store, settings = direct_store
    sent: dict[str, list[str]] = {"clean": [], "part": [], "merge": []}
    senders = Senders(
        clean=sent["clean"].append, part=sent["part"].append, merge=sent["merge"].append
    )
    split_job, split_parts = running_split_job(store, 2)
    store.parts.coll.update_one(  # part 2 running on a worker silent for a minute
        {"_id": split_parts[1]["_id"]},
        {"$set": {"status": "running", "worker": "w:9", "heartbeat_ts": 1.0}},
    )
    merging_job, _ = running_split_job(store, 2)  # both parts done, the merger silent
    store.parts.coll.update_many({"job_id": merging_job}, {"$set": {"status": "succeeded"}})
    store.jobs.update_one({"_id": merging_job}, {"$set": {"merge_ts": time.time() - 60}})

    result = sweep(JobContext(store, settings, open_storage(settings), "sweeper:1", senders))
    assert split_parts[1]["_id"] in result.requeued
    assert store.parts.get(split_parts[1]["_id"])["status"] == "queued"
    assert sent["part"] == [split_parts[1]["_id"]]
    assert sent["merge"] == [merging_job]
    assert sent["clean"] == []  # the split jobs themselves are never requeued whole
    assert store.get(split_job)["status"] == "running"
