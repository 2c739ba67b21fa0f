"""Faults on real processes: broker down, store down, a worker killed, a stale job swept.

This module runs its own stack, since it stops and restarts the services.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from src.core.storage import open_storage
from src.data.pipeline import clean_file
from src.jobs.context import JobContext, Outcome
from src.jobs.model import new_job_id
from src.jobs.run import run_job
from src.jobs.store import JobStore
from tests.integration.conftest import (
    hold_path,
    settings_for,
    stack_or_skip,
    unavailable,
    upload,
    wait_held,
    wait_job,
)
from tests.support.hold import held
from tests.support.inputs import OPTIONS, job_doc, make_input
from tests.support.services import Stack, stop, wait_for


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("faults")
    with stack_or_skip(workdir, MONGO_DB="faults", REQUEUE_QUEUED_AFTER_SECONDS="5") as s:
        yield s


@pytest.fixture(scope="module")
def fapi(fstack: Stack) -> Iterator[httpx.Client]:
    # beat: the sweep runs. Supervised like the ml-worker container (restart: unless-stopped):
    # the kombu guard (src/worker/kombu_guard.py) contains kombu 5.7's Redis-restart crash.
    worker = fstack.start_worker(
        "faults", concurrency=2, beat=True, supervised=True, hold_file=hold_path(fstack)
    )
    proc, base = fstack.start_api()
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client
    stop(proc)
    stop(worker)


def job_dirs(stack: Stack) -> set[str]:
    root = stack.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_broker_down_gives_503_and_no_orphan(
    fstack: Stack, fapi: httpx.Client, sample_path: Path
) -> None:
    before_jobs = {j["id"] for j in fapi.get("/jobs", params={"limit": 200}).json()["items"]}
    before_dirs = job_dirs(fstack)
    fstack.redis.stop()
    try:
        r = upload(fapi, sample_path)
        assert r.status_code == 503
        assert "broker (Redis) unavailable" in r.json()["detail"]
        ready = fapi.get("/ready")
        assert ready.status_code == 503 and ready.json()["redis"].startswith("unavailable")
        after = {j["id"] for j in fapi.get("/jobs", params={"limit": 200}).json()["items"]}
        assert after == before_jobs  # no job left queued without a task
        assert job_dirs(fstack) == before_dirs  # and no file left behind
    finally:
        fstack.redis = fstack.redis.restart()
    wait_for(lambda: fapi.get("/ready").status_code == 200, 30, "ready after Redis restart")
    job_id = upload(fapi, sample_path).json()["id"]
    assert wait_job(fapi, job_id, timeout=90)["status"] == "succeeded"


def test_store_down_gives_503_and_recovers(
    fstack: Stack, fapi: httpx.Client, sample_path: Path
) -> None:
    if fstack.store.proc is None:
        pytest.skip("MONGO_URL points at an external MongoDB: not ours to stop")
    before_dirs = job_dirs(fstack)
    fstack.store.stop()
    try:
        ready = fapi.get("/ready")
        assert ready.status_code == 503 and ready.json()["mongodb"].startswith("unavailable")
        r = upload(fapi, sample_path)
        assert r.status_code == 503 and "job store (MongoDB) unavailable" in r.json()["detail"]
        assert fapi.get("/jobs/whatever").status_code == 503
        assert job_dirs(fstack) == before_dirs
    finally:
        fstack.store = fstack.store.restart()
    wait_for(lambda: fapi.get("/ready").status_code == 200, 30, "ready after store restart")
    job_id = upload(fapi, sample_path).json()["id"]
    assert wait_job(fapi, job_id, timeout=90)["status"] == "succeeded"


def test_worker_killed_mid_job_is_redelivered(
    fstack: Stack, fapi: httpx.Client, tmp_path: Path
) -> None:
    """SIGKILL of the pool process cleaning a job: redelivered, cleaned again, same result.

    Held in flight (tests/support/hold.py), the job cannot end before the kill lands.
    benchmarks/kill_trials.py kills at unheld moments, 20 times.
    """
    source = make_input(tmp_path / "kill.csv")
    expected = tmp_path / "expected.csv"
    clean_file(source, expected, OPTIONS)
    for _ in range(3):
        with held(hold_path(fstack)) as hold:
            job_id = upload(fapi, source, OPTIONS.model_dump_json()).json()["id"]
            wait_held(fapi, job_id, hold)
            os.kill(_pool_process(fstack, job_id), signal.SIGKILL)
        done = wait_job(fapi, job_id, timeout=180)
        assert done["status"] == "succeeded", done
        assert done["attempts"] >= 2  # the killed attempt, then the one that finished
        assert fapi.get(f"/jobs/{job_id}/result").content == expected.read_bytes()
        folder = fstack.data_dir / "jobs" / job_id
        assert sorted(p.name for p in folder.iterdir()) == ["input.csv", "result.csv"]


def _pool_process(stack: Stack, job_id: str) -> int:
    """The pid of the pool process that claimed the job (`worker` is `host:pid`)."""
    env = stack.env()
    with MongoClient(env["MONGO_URL"]) as mongo:
        doc = mongo[env["MONGO_DB"]]["jobs"].find_one({"_id": job_id})
    return int(doc["worker"].rsplit(":", 1)[1])


def _insert_running(store: JobStore, stack: Stack, sample: Path, attempts: int) -> str:
    job_id = new_job_id()
    folder = stack.data_dir / "jobs" / job_id
    folder.mkdir(parents=True)
    (folder / "input.csv").write_bytes(sample.read_bytes())
    doc = job_doc(job_id, f"jobs/{job_id}/input.csv")
    store.jobs.insert_one(
        {
            **doc,
            "status": "running",
            "attempts": attempts,
            "worker": "dead:1",
            "heartbeat_ts": time.time() - 3600,
        }
    )
    return job_id


def test_sweep_requeues_stale_running_job(
    fstack: Stack, fapi: httpx.Client, sample_path: Path
) -> None:
    """A job left `running` by a dead worker: the periodic sweep requeues it and it completes."""
    store = JobStore(settings_for(fstack))
    job_id = _insert_running(store, fstack, sample_path, attempts=1)
    done = wait_job(fapi, job_id, timeout=60)
    assert done["status"] == "succeeded" and done["attempts"] == 2


def test_redelivery_cap_fails_the_job(fstack: Stack, fapi: httpx.Client, sample_path: Path) -> None:
    settings = settings_for(fstack)
    store = JobStore(settings)
    job_id = _insert_running(store, fstack, sample_path, attempts=settings.max_attempts)
    # Run here, or by the sweep's requeue and a worker: either way the cap ends it.
    ctx = JobContext(store, settings, open_storage(settings), "test:1")
    assert run_job(ctx, job_id) in (
        Outcome.DONE,
        Outcome.GONE,
    )
    job = wait_job(fapi, job_id, timeout=30)
    assert job["status"] == "failed"
    assert f"lost {settings.max_attempts} times" in job["error"]


def test_sweep_expires_old_jobs_and_their_files(
    fstack: Stack, fapi: httpx.Client, sample_path: Path
) -> None:
    settings = settings_for(fstack)
    store = JobStore(settings)
    job_id = _insert_running(store, fstack, sample_path, attempts=0)
    store.jobs.update_one({"_id": job_id}, {"$set": {"status": "succeeded", "expires_ts": 1.0}})
    folder = fstack.data_dir / "jobs" / job_id
    wait_for(lambda: store.get(job_id) is None and not folder.exists(), 30, "expiry by the sweep")


def test_redis_restart_during_burst(fstack: Stack, fapi: httpx.Client, tmp_path: Path) -> None:
    """Redis restarted amid 4 submitters: 202 or 503 only, every 202 job ends.

    Each submitter sends at least 50, and keeps sending until the restart is over:
    however fast the API, the restart lands in the middle of the burst.
    """
    small = tmp_path / "small.csv"
    small.write_text(
        ",designation,description,productid,imageid\n"
        + "".join(f"{i},Produit {i},<b>desc</b> {i},{i},{i}\n" for i in range(10))
    )
    codes: list[int] = []
    accepted: list[str] = []
    lock = threading.Lock()
    restarted = threading.Event()

    def submit(n: int) -> None:
        with httpx.Client(base_url=str(fapi.base_url), timeout=60) as client:
            sent = 0
            while sent < n or not restarted.is_set():
                sent += 1
                r = upload(client, small)
                with lock:
                    codes.append(r.status_code)
                    if r.status_code == 202:
                        accepted.append(r.json()["id"])

    threads = [threading.Thread(target=submit, args=(50,), daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(codes) >= 60, 60, "first submissions")
        fstack.redis = fstack.redis.restart()
    finally:
        restarted.set()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads)
    assert len(codes) >= 200
    assert set(codes) <= {202, 503}, sorted(set(codes))
    print(f"burst: {codes.count(202)} accepted, {codes.count(503)} refused with 503")
    deadline = time.monotonic() + 180
    pending = set(accepted)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            if fapi.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed", "cancelled"):
                pending.discard(job_id)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} accepted jobs never ended"
    statuses = {fapi.get(f"/jobs/{j}").json()["status"] for j in accepted}
    assert statuses == {"succeeded"}


MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")
WORKER_LIMIT_MB = 450


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A cgroup-v1 memory limit for a worker (these machines have one)."""
    group = MEMORY_CGROUPS / f"product-cleaning-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(WORKER_LIMIT_MB << 20))
    except OSError as exc:
        unavailable("a memory cgroup for the limit test", exc)
    yield group
    for pid in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)
    group.rmdir()


def test_worker_under_memory_limit_cleans_larger_input(
    fstack: Stack, memory_cgroup: Path, tmp_path: Path
) -> None:
    """Input larger than the worker's whole memory limit: chunking keeps it alive."""
    words = [
        "chaise",
        "table",
        "bois",
        "massif",
        "livraison",
        "couleur",
        "noir",
        "blanc",
        "qualité",
        "résistant",
    ]
    desc = " ".join(words[i % len(words)] for i in range(900))
    big = tmp_path / "large.csv"
    with big.open("w", encoding="utf-8") as fh:
        fh.write(",designation,description,productid,imageid\n")
        row = 0
        while fh.tell() < (WORKER_LIMIT_MB + 100) << 20:
            fh.writelines(
                f'{row + i},Produit {row + i},"<p>{desc}</p>",{row + i},1\n' for i in range(1000)
            )
            row += 1000
    source = fstack.data_dir / "raw" / "large.csv"
    shutil.move(big, source)
    isolated = {"REDIS_URL": fstack.redis.url.replace("/0", "/1")}  # its own queue
    enter = ["sh", "-c", f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$@"', "sh"]
    worker = fstack.start_worker("limited", concurrency=1, prefix=enter, **isolated)
    proc, base = fstack.start_api(**isolated)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/jobs/clean", json={"source": "raw/large.csv"})
            assert r.status_code == 202, r.text
            done = wait_job(client, r.json()["id"], timeout=300)
        assert done["status"] == "succeeded", done
        assert done["report"]["rows_out"] == row
        assert done["attempts"] == 1  # no pool process was OOM-killed and redelivered
        assert worker.poll() is None
        assert source.stat().st_size >> 20 > WORKER_LIMIT_MB
    finally:
        stop(proc)
        stop(worker)
        source.unlink(missing_ok=True)
