"""Load on the job service, two modes; bounded in count and time, loopback only.

`jobs` (the default): concurrent clients submit small jobs and poll them, against 1 and
2 workers. Each client submits `--jobs` 10-row jobs one after the other and polls each
until it ends. Prints `name=value` lines; the last is `jobs_per_s_<max>_workers`.

    uv run python benchmarks/load.py [--clients 8] [--jobs 10] [--workers 1,2]

`submit`: the API as compose runs it (the API image's uvicorn command: one process,
API keys on) with one Celery worker process (beat inside), Redis and the store on this
machine. `--clients` (50) concurrent clients each upload a 10-row CSV again and again
for `--seconds` (15); then as many poll `GET /jobs/{id}` of the accepted jobs for as
long. One thread and keep-alive connection per client (httpx), in this process. The CPU
share of each process (clients, API, worker, store, Redis: `*_cpu_pct`, of one core) and
of the whole machine (`machine_busy_pct`, of all cores, neighbours included) is printed,
so that a client-bound or crowded run shows. The last line is `submit_accepted_per_s`.

    uv run python benchmarks/load.py --mode submit [--clients 50] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.core.config import Settings  # noqa: E402
from tests.support.services import Stack, free_port, running_stack, stop, wait_for  # noqa: E402

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


# ------------------------------------------------------------------ mode `submit`
# The API image's command (docker/api/Dockerfile CMD; compose sets no other), on loopback.
API_COMMAND = ["uvicorn", "src.api.main:app", "--host", "127.0.0.1", "--no-server-header"]
# The test stack shortens these; the service runs with the code's defaults (as compose).
PRODUCTION_DEFAULTS = (
    "heartbeat_seconds",
    "stale_after_seconds",
    "sweep_interval_seconds",
    "broker_timeout_seconds",
    "store_timeout_ms",
    "callback_retries",
    "callback_allow_private",
)
WARM_UP_S = 2.0
MAX_REQUESTS = 200_000  # per phase, whatever the time: the count is bounded too


def production_env() -> dict[str, str]:
    fields = Settings.model_fields
    return {name.upper(): str(fields[name].default).lower() for name in PRODUCTION_DEFAULTS}


def start_api_as_compose(stack: Stack, key: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / API_COMMAND[0]), *API_COMMAND[1:]]
    env = stack.env(API_KEYS=f"load:{key}", **production_env())
    with (stack.logs / "api.log").open("ab") as log:  # its own group: stop() takes it whole
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200, 60, "API", proc)
    return proc, base


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process of a process group (a service and its children)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:
            total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Phase:
    """`clients` threads, each with its own keep-alive connection, calling `request` until
    the deadline: latencies of the requests that did what they should, and failures.

    Threads, not asyncio: httpx's asyncio pool shared by 50 tasks spent ~5 ms of client
    CPU a request here (the client became the bottleneck at ~100 requests/s), a client
    per thread ~0.7 ms (measured against a stub server on this machine).
    """

    def __init__(
        self, base: str, key: str, clients: int, seconds: float, groups: dict[str, int]
    ) -> None:
        self.base, self.key, self.clients, self.seconds = base, key, clients, seconds
        self.groups = groups  # name → process group id, whose CPU shares are printed
        self.ok: list[float] = []
        self.failed: dict[str, int] = {}
        self.count = 0
        self.lock = threading.Lock()

    def _client(
        self, request: Callable[[httpx.Client, int], bool], n: int, deadline: float
    ) -> None:
        with httpx.Client(base_url=self.base, headers={"X-API-Key": self.key}, timeout=30) as http:
            while time.perf_counter() < deadline:
                with self.lock:
                    if self.count >= MAX_REQUESTS:
                        return
                    self.count += 1
                t0 = time.perf_counter()
                try:
                    ok = request(http, n)
                except httpx.HTTPError as exc:
                    with self.lock:
                        name = type(exc).__name__
                        self.failed[name] = self.failed.get(name, 0) + 1
                    continue
                if ok:
                    self.ok.append(time.perf_counter() - t0)  # list.append: atomic

    def run(self, request: Callable[[httpx.Client, int], bool]) -> dict[str, float]:
        deadline = time.perf_counter() + self.seconds
        threads = [
            threading.Thread(target=self._client, args=(request, n, deadline))
            for n in range(self.clients)
        ]
        cpu0 = {name: group_cpu_seconds(g) for name, g in self.groups.items()}
        client0, machine0, wall0 = time.process_time(), machine_busy(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall0
        ms = [s * 1000 for s in self.ok] or [float("nan")]
        found = {
            "per_s": len(self.ok) / wall,
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99),
            "errors": sum(self.failed.values()),
            "client_cpu_pct": 100 * (time.process_time() - client0) / wall,
        }
        for name, group in self.groups.items():
            found[f"{name}_cpu_pct"] = 100 * (group_cpu_seconds(group) - cpu0[name]) / wall
        # Less noisy than rates on a shared machine: CPU each request cost the API.
        found["api_cpu_ms_per_request"] = 10 * found["api_cpu_pct"] / max(found["per_s"], 1e-9)
        busy, total = (now - then for now, then in zip(machine_busy(), machine0, strict=True))
        found["machine_busy_pct"] = 100 * busy / total  # all cores, every process: ours, others'
        return found


def drive(
    base: str, key: str, clients: int, seconds: float, groups: dict[str, int]
) -> tuple[list[str], bool]:
    """The warm-up, the submissions, the polls: the lines to print, and whether every
    request was answered as it should."""
    accepted: list[str] = []
    statuses: dict[int, int] = {}

    def refused(status: int) -> bool:
        statuses[status] = statuses.get(status, 0) + 1
        return False

    def submit(http: httpx.Client, _: int) -> bool:
        r = http.post("/jobs/clean", files={"file": ("small.csv", SMALL, "text/csv")})
        if r.status_code != 202:
            return refused(r.status_code)
        accepted.append(r.json()["id"])
        return True

    def get(http: httpx.Client, n: int) -> bool:
        job_id = accepted[(n * 7919 + len(got.ok)) % len(accepted)]
        r = http.get(f"/jobs/{job_id}")
        return True if r.status_code == 200 else refused(r.status_code)

    Phase(base, key, clients, WARM_UP_S, groups).run(submit)  # connections, Celery's first send
    if not accepted:
        raise SystemExit(f"no submission accepted during the warm-up: {statuses}")
    load_submit = loadavg()
    sub = Phase(base, key, clients, seconds, groups).run(submit)
    load_get = loadavg()
    got = Phase(base, key, clients, seconds, groups)
    get_ = got.run(get)
    lines = [f"load_average_at_submit={load_submit}", f"load_average_at_get={load_get}"]
    lines += [f"clients={clients}", f"seconds={seconds:g}", f"refused_statuses={statuses or 0}"]
    for name, value in get_.items():
        lines.append(f"get_{name}={value:.1f}")
    for name, value in sub.items():
        lines.append(f"submit_{name}={value:.1f}")
    lines.append(f"submit_accepted_per_s={sub['per_s']:.1f}")
    return lines, not statuses and sub["errors"] == get_["errors"] == 0


def submit_mode(clients: int, seconds: float) -> int:
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp), MONGO_DB="load") as stack:
        stack.extra_env.update(production_env())
        worker = stack.start_worker("load", concurrency=1, beat=True)
        api = None
        try:
            api, base = start_api_as_compose(stack, key)
            groups = {"api": api.pid, "worker": worker.pid, "redis": stack.redis.proc.pid}
            if stack.store.proc is not None:  # not a MONGO_URL of elsewhere
                groups["store"] = stack.store.proc.pid
            lines, clean = drive(base, key, clients, seconds, groups)
        finally:
            stop(api)
            stop(worker)
    for line in lines:
        print(line, flush=True)
    return 0 if clean else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["jobs", "submit"], default="jobs")
    parser.add_argument("--clients", type=int, help="concurrent clients (jobs: 8, submit: 50)")
    parser.add_argument("--jobs", type=int, default=10, help="jobs: jobs per client")
    parser.add_argument("--workers", default="1,2", help="jobs: worker counts to compare")
    parser.add_argument("--time-limit", type=float, default=120, help="jobs: seconds per run")
    parser.add_argument("--seconds", type=float, default=15, help="submit: seconds per phase")
    args = parser.parse_args()
    if args.mode == "submit":
        return submit_mode(args.clients or 50, args.seconds)
    args.clients = args.clients or 8
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
