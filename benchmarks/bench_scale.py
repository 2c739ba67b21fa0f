"""One large job, one worker process against two: does splitting a job across workers pay?

Real parts on loopback (``tests/support/services.py``): Redis, the nx-27017 store, the
API, and Celery worker processes (one pool process each, as one ``ml-worker``
container per core would run). The input is synthetic from the real sample:
its rows tiled to ``--rows`` (default 1,000,000; ~610 MB), each with a unique
index and product id, written into DATA_DIR and submitted as a ``source`` job
(the upload is not what is measured).

Three runs of the same job, each on freshly started workers:

1. one worker, the job not split (SPLIT_ABOVE_MB above the input size);
2. one worker, the job split (default SPLIT_ABOVE_MB and PART_MB, or the flags');
3. two workers, the same split.

Each setting runs ``--repeats`` times (default 3), interleaved so that drift in this
machine's speed hits all three, and every figure is the **median** of its runs (not
the fastest: one lucky run must not make the case). Job time is the job's own
``finished_at - created_at``; the merge is the time from the merge's last claim to the
job's end (what is left to merge once the last part is done). Peak RSS is each pool
process's high-water mark (VmHWM) at the end of a run. All results must be
byte-identical (sha256). The load average before and after is printed: the
figures mean little on a busy machine. The last line, ``speedup_2_workers``, divides
the faster one-worker median (1 or 2) by the two-worker median: target ≥ 1.7 on 2 cores.

    uv run python benchmarks/bench_scale.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.core.config import Settings
from tests.support.services import Stack, running_stack, stop

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rakuten_sample.csv"


def make_input(target: Path, rows: int) -> int:
    """The sample's rows tiled to `rows`, each with its own index and product id; bytes."""
    records = list(csv.reader(io.StringIO(SAMPLE.read_text(encoding="utf-8"), newline="")))
    header, body = records[0], records[1:]
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\n")
    middles = []  # designation and description, quoted once
    for record in body:
        line.seek(0)
        line.truncate()
        writer.writerow(record[1:3])
        middles.append((line.getvalue().rstrip("\n"), record[3], record[4]))
    with target.open("w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(header) + "\n")
        n = len(middles)
        for i in range(rows):
            middle, product, image = middles[i % n]
            fh.write(f"{i},{middle},{product}{i // n},{image}\n")
    return target.stat().st_size


def pool_processes(worker_pid: int) -> list[int]:
    """The prefork pool children of a Celery worker process."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker_pid:
            children.append(int(stat.parent.name))
    return children


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_job(stack: Stack, client: httpx.Client, workers: int, name: str, **env: str) -> dict:
    procs = [stack.start_worker(f"{name}{i}", concurrency=1, **env) for i in range(1, workers + 1)]
    try:
        r = client.post("/jobs/clean", json={"source": "bench/input.csv"})
        r.raise_for_status()
        job_id = r.json()["id"]
        while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(1)  # times come from the job itself; polling less leaves the cores be
        if job["status"] != "succeeded":
            raise SystemExit(f"{name}: job {job['status']}: {job['error']}")
        rss = [peak_rss_mb(pid) for proc in procs for pid in pool_processes(proc.pid)]
        env = stack.env()
        with MongoClient(env["MONGO_URL"]) as mongo:
            doc = mongo[env["MONGO_DB"]]["jobs"].find_one({"_id": job_id})
        digest = hashlib.sha256()
        with client.stream("GET", f"/jobs/{job_id}/result") as result:
            for chunk in result.iter_bytes(1 << 20):
                digest.update(chunk)
    finally:
        for proc in procs:
            stop(proc)
    seconds = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
    ).total_seconds()
    return {
        "seconds": seconds,
        "parts": job["progress"].get("parts_total") or 1,
        "rows": job["report"]["rows_in"],
        "rss": max(rss) if rss else 0.0,
        "sha256": digest.hexdigest(),
        "merge": doc["finished_ts"] - doc.get("merge_started_ts", doc["finished_ts"]),
    }


def medians(runs: list[dict]) -> dict:
    """Each figure's median over the runs of one setting."""
    figures = ("seconds", "rss", "merge")
    return {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in figures}}


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the input")
    defaults = Settings()
    parser.add_argument(
        "--split-above-mb", type=float, default=defaults.split_above_mb, help="SPLIT_ABOVE_MB"
    )
    parser.add_argument("--part-mb", type=float, default=defaults.part_mb, help="PART_MB")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each setting (the median counts)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the stack's files and logs here (default: a temp dir)"
    )
    args = parser.parse_args()
    split = {"SPLIT_ABOVE_MB": str(args.split_above_mb), "PART_MB": str(args.part_mb)}
    with (
        (
            contextlib.nullcontext(str(args.workdir))
            if args.workdir
            else tempfile.TemporaryDirectory(prefix="bench-scale-")
        ) as tmp,
        running_stack(Path(tmp) / "stack", MONGO_DB="bench_scale") as stack,
    ):
        (stack.data_dir / "bench").mkdir(parents=True)
        size = make_input(stack.data_dir / "bench" / "input.csv", args.rows)
        print(f"rows={args.rows}")
        print(f"input_mb={size / 2**20:.0f}")
        print(f"split_above_mb={args.split_above_mb:g}")
        print(f"part_mb={args.part_mb:g}")
        load_before = load_avg()
        api, base = stack.start_api()
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                never = str(size / 2**20 * 2)
                runs: dict[str, list[dict]] = {"whole": [], "split-one": [], "split-two": []}
                for _ in range(args.repeats):  # interleaved: drift in the machine hits all
                    runs["whole"].append(run_job(stack, client, 1, "whole", SPLIT_ABOVE_MB=never))
                    runs["split-one"].append(run_job(stack, client, 1, "split-one", **split))
                    runs["split-two"].append(run_job(stack, client, 2, "split-two", **split))
                one, split1, split2 = (medians(runs[name]) for name in runs)
                digests = {r["sha256"] for rs in runs.values() for r in rs}
        finally:
            stop(api)
    assert one["rows"] == split1["rows"] == split2["rows"] == args.rows
    identical = len(digests) == 1
    print(f"repeats={args.repeats}")
    print(f"load_before={load_before}")
    print(f"load_after={load_avg()}")
    print(f"parts={split2['parts']}")
    for name, rs in runs.items():
        print(f"runs_{name.replace('-', '_')}=" + " ".join(f"{r['seconds']:.1f}" for r in rs))
    print(f"seconds_1_worker_whole={one['seconds']:.1f}")
    print(f"seconds_1_worker_split={split1['seconds']:.1f}")
    print(f"seconds_2_workers_split={split2['seconds']:.1f}")
    print(f"merge_seconds_2_workers={split2['merge']:.1f}")
    print(f"rows_per_s_2_workers={args.rows / split2['seconds']:.0f}")
    print(f"peak_rss_mb_1_worker_whole={one['rss']:.0f}")
    print(f"peak_rss_mb_1_worker_split={split1['rss']:.0f}")
    print(f"peak_rss_mb_per_worker_2_workers={split2['rss']:.0f}")
    print(f"results_identical={identical}")
    best_one = min(one["seconds"], split1["seconds"])
    print(f"speedup_2_workers={best_one / split2['seconds']:.2f}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
