"""Load: concurrent clients submit small jobs and poll them, against 1 and 2 workers.

Bounded in count and time, loopback only. Each client submits `--jobs` 10-row
jobs one after the other and polls each until it ends.

    uv run python benchmarks/load.py [--clients 8] [--jobs 10] [--workers 1,2]

Prints `name=value` lines; the last is `jobs_per_s_<max>_workers`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.services import running_stack, stop

SMALL = ",designation,description,productid,imageid\n" + "".join(
    f"{i},Produit {i},<p>Chaise &eacute;l&eacute;gante</p> l¿encre {i},{i},{i}\n" for i in range(10)
)
TERMINAL = {"succeeded", "failed", "cancelled"}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def client_loop(base: str, jobs: int, deadline: float, out: dict[str, list]) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(jobs):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                r = client.post("/jobs/clean", files={"file": ("small.csv", SMALL, "text/csv")})
            except httpx.HTTPError as exc:
                out["errors"].append(type(exc).__name__)
                continue
            out["submit"].append(time.perf_counter() - t0)
            if r.status_code != 202:
                out["errors"].append(str(r.status_code))
                continue
            job_id = r.json()["id"]
            while time.monotonic() < deadline:
                status = client.get(f"/jobs/{job_id}").json()["status"]
                if status in TERMINAL:
                    out["done" if status == "succeeded" else "errors"].append(status)
                    break
                time.sleep(0.02)


def run(workers: int, clients: int, jobs: int, limit: float, workdir: Path) -> dict[str, float]:
    with running_stack(workdir, MONGO_DB=f"load_{workers}") as stack:
        procs = [stack.start_worker(f"load{i}", concurrency=1) for i in range(workers)]
        api, base = stack.start_api()
        try:
            out: dict[str, list] = {"submit": [], "done": [], "errors": []}
            deadline = time.monotonic() + limit
            threads = [
                threading.Thread(target=client_loop, args=(base, jobs, deadline, out))
                for _ in range(clients)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
        finally:
            stop(api)
            for p in procs:
                stop(p)
    ms = [s * 1000 for s in out["submit"]]
    return {
        "submit_p50_ms": percentile(ms, 50),
        "submit_p95_ms": percentile(ms, 95),
        "submit_p99_ms": percentile(ms, 99),
        "submit_mean_ms": statistics.fmean(ms),
        "jobs_done": len(out["done"]),
        "errors": len(out["errors"]),
        "jobs_per_s": len(out["done"]) / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per client")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--time-limit", type=float, default=120, help="seconds per run, at most")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            results[n] = run(n, args.clients, args.jobs, args.time_limit, Path(tmp) / f"w{n}")
            for name, value in results[n].items():
                print(
                    f"workers_{n}_{name}={value:.1f}"
                    if isinstance(value, float)
                    else f"workers_{n}_{name}={value}",
                    flush=True,
                )
    print(f"clients={args.clients}")
    print(f"jobs_per_s_{counts[-1]}_workers={results[counts[-1]]['jobs_per_s']:.1f}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
