"""Load on the job service, two modes; bounded in count and time, loopback only.

`jobs` (the default): concurrent clients submit small jobs and poll them, against 1 and
2 workers. Each client submits `--jobs` 10-row jobs one after the other and polls each
until it ends. Prints `name=value` lines; the last is `jobs_per_s_<max>_workers`.

    uv run python benchmarks/load.py [--clients 8] [--jobs 10] [--workers 1,2]

`submit`: the API as compose runs it (the API image's uvicorn command: one process,
API keys on) with one Celery worker process (beat inside), Redis and the store on this
machine. `--clients` (50) keep-alive connections each upload a 10-row CSV again and again
for `--seconds` (15, whole seconds); then as many pollers `GET /jobs/{id}` for as long,
each following one accepted job as a client waiting for its job does (`get_*`); then,
for as long again, every request asks for another of the thousands of accepted jobs
(`get_any_*`: a scan rather than polling, each read older than the cache's age limit,
so the store's read path). The clients are `wrk` (C, its Lua scripting LuaJIT: microseconds of CPU
a request; benchmarks/load_wrk.lua) and not Python threads: on these 2 cores httpx
threads cost ~0.6 ms of CPU a request, half a core taken from the service they measure
(GET: 840 requests/s, p99 180 ms with httpx; 1,540-1,714, p99 86-103 ms with wrk).
Latencies are wrk's histogram of every answer. The CPU share of each process (wrk, API,
worker, store, Redis: `*_cpu_pct`, of one core) and of the whole machine
(`machine_busy_pct`, of all cores, neighbours included) is printed, so that a
client-bound or crowded run shows. The last line is `submit_accepted_per_s`. Needs
`wrk` (`apt-get install wrk`).

    uv run python benchmarks/load.py --mode submit [--clients 50] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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
WARM_UP_S = 2  # wrk's -d is whole seconds
# Per phase: load_wrk.lua stops its thread there (wrk.thread:stop()), whatever the time left.
MAX_REQUESTS = 200_000
WRK_SCRIPT = Path(__file__).with_name("load_wrk.lua")


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


@dataclass
class WrkRun:
    """What one wrk run printed (`load name=value` lines of load_wrk.lua's done())."""

    values: dict[str, float]
    statuses: dict[int, int]
    client_cpu_s: float  # wrk's own CPU (user + system), from wait4's rusage
    wall_s: float  # around the process: the window the CPU shares are taken over


def wrk(args: list[str], env: dict[str, str], limit: float) -> tuple[str, float]:
    """Run wrk to its end (killed past `limit` seconds): its stdout and CPU seconds."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["wrk", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + limit
        while True:  # wait4, not Popen.wait: the rusage is the client's CPU
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0 or "load requests=" not in text:
        raise SystemExit(f"wrk {' '.join(args)} ended {proc.returncode}:\n{text}")
    return text, usage.ru_utime + usage.ru_stime


class Wrk:
    """The phases of `submit`, each one `wrk -t1 -c<clients> -d<seconds>s` run with
    load_wrk.lua: keep-alive connections, each sending its next request as soon as the
    last is answered (closed loop, as the httpx threads were)."""

    def __init__(
        self, base: str, key: str, clients: int, groups: dict[str, int], workdir: Path
    ) -> None:
        self.base, self.key, self.clients, self.groups = base, key, clients, groups
        self.workdir = workdir
        # The body httpx sent: SMALL as the multipart field `file`.
        upload = httpx.Request("POST", base, files={"file": ("small.csv", SMALL, "text/csv")})
        (workdir / "body").write_bytes(upload.read())
        self.content_type = upload.headers["Content-Type"]
        self.runs = 0

    def run(
        self, phase: str, seconds: int, ids: list[str] | None = None
    ) -> tuple[WrkRun, list[str]]:
        """One phase: what wrk measured, and (submit) the accepted jobs' ids."""
        self.runs += 1
        ids_path = self.workdir / f"ids{self.runs}"
        if ids is not None:
            ids_path.write_text("".join(f"{i}\n" for i in ids))
        env = {
            **os.environ,
            "LOAD_PHASE": phase,
            "LOAD_BODY": str(self.workdir / "body"),
            "LOAD_TYPE": self.content_type,
            "LOAD_IDS": str(ids_path),
            "LOAD_MAX": str(MAX_REQUESTS),
        }
        url = f"{self.base}/jobs/clean" if phase == "submit" else self.base
        args = ["-t1", f"-c{self.clients}", f"-d{seconds}s", "--latency", "--timeout", "30s"]
        args += ["-s", str(WRK_SCRIPT), "-H", f"X-API-Key: {self.key}", url]
        cpu0 = {name: group_cpu_seconds(g) for name, g in self.groups.items()}
        machine0, wall0 = machine_busy(), time.perf_counter()
        text, client_cpu = wrk(args, env, seconds + 60)
        wall = time.perf_counter() - wall0
        values: dict[str, float] = {}
        statuses: dict[int, int] = {}
        for line in text.splitlines():
            if line.startswith("load "):
                name, value = line[5:].split("=", 1)
                if name.startswith("status_"):
                    statuses[int(name[7:])] = int(value)
                else:
                    values[name] = float(value)
        for name, group in self.groups.items():
            values[f"{name}_cpu_s"] = group_cpu_seconds(group) - cpu0[name]
        busy, total = (now - then for now, then in zip(machine_busy(), machine0, strict=True))
        values["machine_busy_pct"] = 100 * busy / total  # all cores, every process
        if values["capped_threads"]:
            print(f"warning: {phase} reached {MAX_REQUESTS} requests early", file=sys.stderr)
        accepted = []
        for path in self.workdir.glob(f"{ids_path.name}.*"):  # one file per wrk thread
            accepted += path.read_text().split()
        if phase == "submit" and len(accepted) != statuses.get(202, 0):
            raise SystemExit(f"{statuses.get(202, 0)} submissions accepted, {len(accepted)} ids")
        return WrkRun(values, statuses, client_cpu, wall), accepted


def figures(run: WrkRun, expected: int) -> dict[str, float]:
    """The `name=value` figures of one phase: `per_s` counts the answers with the
    expected status over wrk's duration of the phase; CPU shares are of one core."""
    v, ok = run.values, run.statuses.get(expected, 0)
    found = {
        "per_s": ok / (v["duration_us"] / 1e6),
        "p50_ms": v["latency_p50_us"] / 1000,
        "p95_ms": v["latency_p95_us"] / 1000,
        "p99_ms": v["latency_p99_us"] / 1000,
        "errors": sum(v[f"errors_{e}"] for e in ("connect", "read", "write", "timeout")),
        "client_cpu_pct": 100 * run.client_cpu_s / run.wall_s,
    }
    for name in [n[: -len("_cpu_s")] for n in v if n.endswith("_cpu_s")]:
        found[f"{name}_cpu_pct"] = 100 * v[f"{name}_cpu_s"] / run.wall_s
    # Less noisy than rates on a shared machine: CPU each request cost the API.
    found["api_cpu_ms_per_request"] = 1000 * v["api_cpu_s"] / max(ok, 1)
    found["machine_busy_pct"] = v["machine_busy_pct"]
    return found


def drive(
    base: str, key: str, clients: int, seconds: int, groups: dict[str, int], workdir: Path
) -> tuple[list[str], bool]:
    """The warm-up, the submissions, the polls: the lines to print, and whether every
    request was answered as it should."""
    load = Wrk(base, key, clients, groups, workdir)
    statuses: dict[int, int] = {}

    def refused(run: WrkRun, expected: int) -> None:
        for status, n in run.statuses.items():
            if status != expected:
                statuses[status] = statuses.get(status, 0) + n

    warm, accepted = load.run("submit", WARM_UP_S)  # connections, Celery's first send
    refused(warm, 202)
    if not accepted:
        raise SystemExit(f"no submission accepted during the warm-up: {statuses}")
    load_submit = loadavg()
    submitted, ids = load.run("submit", seconds)
    refused(submitted, 202)
    everyone = accepted + ids
    # The pollers: each client follows one job, as a client waiting for its job does
    # (spread over the accepted jobs: finished, running and queued ones).
    followed = everyone[:: max(1, len(everyone) // clients)][:clients]
    load_get = loadavg()
    got, _ = load.run("get", seconds, followed)
    refused(got, 200)
    # Then every request another job of the thousands accepted: a scan, not polling; each
    # read is older than JOB_CACHE_SECONDS, so this is the store's read path.
    scanned, _ = load.run("get", seconds, everyone)
    refused(scanned, 200)
    sub, get_, any_ = figures(submitted, 202), figures(got, 200), figures(scanned, 200)
    lines = [f"load_average_at_submit={load_submit}", f"load_average_at_get={load_get}"]
    lines += [f"clients={clients}", f"seconds={seconds:g}", f"refused_statuses={statuses or 0}"]
    lines.append(f"jobs_followed={len(followed)}")
    lines.append(f"jobs_scanned={len(everyone)}")
    for name, value in any_.items():
        lines.append(f"get_any_{name}={value:.1f}")
    for name, value in get_.items():
        lines.append(f"get_{name}={value:.1f}")
    for name, value in sub.items():
        lines.append(f"submit_{name}={value:.1f}")
    lines.append(f"submit_accepted_per_s={sub['per_s']:.1f}")
    return lines, not statuses and sub["errors"] == get_["errors"] == any_["errors"] == 0


def submit_mode(clients: int, seconds: int) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
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
            (Path(tmp) / "wrk").mkdir()
            lines, clean = drive(base, key, clients, seconds, groups, Path(tmp) / "wrk")
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
    parser.add_argument("--seconds", type=int, default=15, help="submit: seconds per phase")
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
