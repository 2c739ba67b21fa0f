"""SIGKILL the worker process in the middle of a job, N times: does every job end right?

Each trial submits a job, waits until it has cleaned some rows, kills the pool
process running it (SIGKILL: no cleanup), and checks that the job still ends
`succeeded` once, with `attempts` showing the redelivery, a result identical to
an undisturbed run, and no temporary file left.

    uv run python benchmarks/kill_trials.py [--trials 20]

Prints `name=value` lines; the last is `kill_trials_ok=<n>/<trials>`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.pipeline import clean_file
from tests.support.inputs import OPTIONS, make_input
from tests.support.services import Stack, running_stack, stop


def poll(client: httpx.Client, job_id: str, until, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {job}")


def trial(
    client: httpx.Client, stack: Stack, source: Path, expected: bytes, attempts: int = 3
) -> tuple[bool, str]:
    """One kill; (ok, why-not). A job that ended before the kill landed is tried again."""
    for _ in range(attempts):
        ok, why = _one_kill(client, stack, source, expected)
        if ok is not None:
            return ok, why
    return False, why


def _one_kill(
    client: httpx.Client, stack: Stack, source: Path, expected: bytes
) -> tuple[bool | None, str]:
    with source.open("rb") as fh:
        r = client.post(
            "/jobs/clean",
            files={"file": (source.name, fh, "text/csv")},
            data={"options": OPTIONS.model_dump_json()},
        )
    job_id = r.json()["id"]
    job = poll(
        client,
        job_id,
        lambda j: (
            j["progress"]["rows_done"] > 0 or (j["status"] != "queued" and j["status"] != "running")
        ),
        120,
    )
    if job["status"] != "running":
        return False, f"never caught running ({job['status']})"
    worker = _worker_of(stack, job_id)
    killed_at = datetime.now(UTC)
    os.kill(worker, signal.SIGKILL)
    done = poll(client, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), 180)
    if done["status"] != "succeeded":
        return False, f"ended {done['status']}: {done['error']}"
    if done["attempts"] < 2:
        if datetime.fromisoformat(done["finished_at"]) <= killed_at:
            return None, "the job ended before the kill landed: no trial"
        return False, f"attempts={done['attempts']} (the kill was not seen)"
    if client.get(f"/jobs/{job_id}/result").content != expected:
        return False, "result differs from an undisturbed run"
    leftovers = sorted(p.name for p in (stack.data_dir / "jobs" / job_id).iterdir())
    if leftovers != ["input.csv", "result.csv"]:
        return False, f"files left: {leftovers}"
    return True, ""


def _worker_of(stack: Stack, job_id: str) -> int:
    from pymongo import MongoClient

    env = stack.env()
    with MongoClient(env["MONGO_URL"]) as mongo:
        doc = mongo[env["MONGO_DB"]]["jobs"].find_one({"_id": job_id})
    return int(doc["worker"].rsplit(":", 1)[1])


def run(trials: int, workdir: Path) -> int:
    source = make_input(workdir / "kill.csv")
    expected_path = workdir / "expected.csv"
    clean_file(source, expected_path, OPTIONS)
    expected = expected_path.read_bytes()
    ok = 0
    started = time.monotonic()
    with running_stack(workdir / "stack", MONGO_DB="kill_trials") as stack:
        worker = stack.start_worker("kill", concurrency=2)
        proc, base = stack.start_api()
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                for i in range(trials):
                    good, why = trial(client, stack, source, expected)
                    ok += good
                    if not good:
                        print(f"trial_{i + 1}_failed={why}", flush=True)
        finally:
            stop(proc)
            stop(worker)
    print(f"kill_trials_seconds={time.monotonic() - started:.1f}")
    print(f"kill_trials_ok={ok}/{trials}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ok = run(args.trials, Path(tmp))
    return 0 if ok == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
