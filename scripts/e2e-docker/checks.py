"""Checks of scripts/e2e-docker.sh against the running containers (host side).

    python scripts/e2e-docker/checks.py etl RAW_DIR CLEANED_DIR
    python scripts/e2e-docker/checks.py stack WORK_DIR API_PORT
    python scripts/e2e-docker/checks.py job BASE_URL API_KEY SAMPLE EXPECTED_CSV
    python scripts/e2e-docker/checks.py unavailable BASE_URL API_KEY SAMPLE

Each prints one line per check passed (`ok: ...`) and exits non-zero, naming what
failed, at the first failure.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import httpx

SAMPLE_ROWS = 672
TEXT_COLUMNS = ("designation", "description")
# What `docker compose up -d` starts in a fresh clone (--scale ml-worker=2).
CORE = {"api": 1, "ml-worker": 2, "beat": 1, "mongodb": 1, "redis": 1}
APP = ("api", "ml-worker", "beat")


class CheckFailed(AssertionError):
    pass


def ok(what: str) -> None:
    print(f"ok: {what}", flush=True)


def expect(condition: bool, what: str, detail: object = "") -> None:
    """Print `ok: what`, or stop with `what` and the detail that shows why not."""
    if not condition:
        raise CheckFailed(f"{what}: {detail}" if detail != "" else what)
    ok(what)


def read_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def check_cleaned(raw: bytes, cleaned: bytes, where: str) -> None:
    """The cleaned file keeps every row and column; its text no longer holds HTML or entities."""
    before, after = read_rows(raw), read_rows(cleaned)
    expect(len(after) == len(before) == SAMPLE_ROWS, f"{where}: {len(after)} rows, as many as in")
    expect(list(after[0]) == list(before[0]), f"{where}: same columns")
    for column in TEXT_COLUMNS:
        left = [r[column] for r in after if "<p>" in r[column] or "&amp;" in r[column]]
        expect(not left, f"{where}: no <p> or &amp; left in {column}")
    changed = sum(b["description"] != a["description"] for b, a in zip(before, after, strict=True))
    expect(changed > 100, f"{where}: {changed} descriptions cleaned")


def check_report(report: dict, where: str) -> None:
    expect(
        report["rows_in"] == report["rows_out"] == SAMPLE_ROWS,
        f"{where}: report counts {SAMPLE_ROWS} rows in and out",
    )
    expect(report["columns"]["description"]["html_stripped"] > 0, f"{where}: report counts HTML")


def etl(raw_dir: str, cleaned_dir: str) -> None:
    raw = Path(raw_dir) / "rakuten_sample.csv"
    cleaned = Path(cleaned_dir) / "rakuten_sample.csv"
    report = Path(cleaned_dir) / "rakuten_sample.report.json"
    expect(cleaned.is_file() and report.is_file(), f"etl: {cleaned.name} and its report written")
    check_cleaned(raw.read_bytes(), cleaned.read_bytes(), "etl")
    check_report(json.loads(report.read_text(encoding="utf-8")), "etl")


def read_json_lines(path: Path) -> list[dict]:
    """`docker compose ps --format json`: one object per line (or one array, before 2.21)."""
    text = path.read_text().strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stack(work_dir: str, api_port: str) -> None:
    """The fresh clone's `docker compose up -d`: what runs, how it is published and bounded,
    and which settings reached the application."""
    work = Path(work_dir)
    ps = read_json_lines(work / "ps.json")
    started: dict[str, int] = {}
    for c in ps:
        started[c["Service"]] = started.get(c["Service"], 0) + 1
    expect(started == CORE, "up: api, 2 ml-workers, beat, mongodb, redis and nothing else", ps)
    down = [c for c in ps if c["State"] != "running" or c.get("ExitCode", 0) != 0]
    expect(not down, "up: every container running, none exited", down)
    sick = [c["Name"] for c in ps if c.get("Health") not in ("", "healthy")]
    expect(not sick, "up: every health check passing", sick)

    inspect = json.loads((work / "inspect.json").read_text())
    by_service: dict[str, list[dict]] = {}
    for c in inspect:
        by_service.setdefault(c["Config"]["Labels"]["com.docker.compose.service"], []).append(c)
    bindings = [
        (c["Name"], b)
        for c in inspect
        for port in (c["HostConfig"]["PortBindings"] or {}).values()
        for b in port
    ]
    expect(
        bool(bindings) and all(b["HostIp"] == "127.0.0.1" for _, b in bindings),
        f"ports: all {len(bindings)} published on 127.0.0.1 only",
        bindings,
    )
    api_ports = by_service["api"][0]["NetworkSettings"]["Ports"]["8000/tcp"]
    expect(
        api_ports == [{"HostIp": "127.0.0.1", "HostPort": api_port}],
        f"ports: the API on 127.0.0.1:{api_port} (API_BIND unset)",
        api_ports,
    )
    for name in APP:
        for c in by_service[name]:
            tmp = c["HostConfig"]["Tmpfs"] or {}
            expect(
                c["HostConfig"]["ReadonlyRootfs"] and tmp.get("/tmp") == "size=256m",
                f"{name}: read-only root, /tmp a 256 MB tmpfs",
                (c["HostConfig"]["ReadonlyRootfs"], tmp),
            )
    for c in by_service["ml-worker"]:
        cmd, memory = c["Config"]["Cmd"], c["HostConfig"]["Memory"]
        expect(
            cmd[cmd.index("-c") + 1] == "2" and memory == 1536 << 20,
            "ml-worker: -c 2 and a 1536 MB memory limit (the defaults)",
            (cmd, memory),
        )
    # An entry without "=" (a setting .env leaves unset) sets nothing: the engine drops it.
    env = {
        name: dict(e.split("=", 1) for e in by_service[name][0]["Config"]["Env"] if "=" in e)
        for name in APP
    }
    expect(
        "RATE_LIMIT_PER_MINUTE" not in env["api"] and "LOG_LEVEL" not in env["api"],
        "env: a setting .env leaves unset is not passed (the code's default applies)",
    )
    expect(
        "API_KEYS" in env["api"] and "API_KEYS" not in env["ml-worker"],
        "env: the API keys go to the API only",
    )

    for name in ("api", "ml-worker"):
        got = json.loads((work / f"settings-{name}.json").read_text())
        wanted = {
            "job_retention_hours": 48,
            "max_attempts": 4,
            "split_above_mb": 0.1,
            "part_mb": 0.02,
            "rate_limit_per_minute": 0,
            "max_streams_per_key": 10,
            "tmpdir": "/data" if name == "api" else "/tmp",
        }
        seen = {k: got[k] for k in wanted}
        what = f"{name}: the settings of .env, the code's defaults for the rest"
        expect(seen == wanted, what, seen)


def unavailable(base_url: str, api_key: str, sample: str) -> None:
    """STORAGE_URL names a bucket whose store is not running: 503 with Retry-After, and
    nothing created. The upload is above 1 MB, so the API spools it to a temporary file
    first (TMPDIR, on the data volume), which must leave nothing behind either."""
    header, rows = Path(sample).read_bytes().split(b"\n", 1)
    data = header + b"\n" + rows * 6
    with httpx.Client(base_url=base_url, timeout=120, headers={"X-API-Key": api_key}) as client:
        before = client.get("/jobs", params={"limit": 200}).raise_for_status().json()["items"]
        done = next(j for j in before if j["status"] == "succeeded")
        refused = {
            "an upload": client.post(
                "/jobs/clean", files={"file": ("rakuten_sample.csv", data, "text/csv")}
            ),
            "a result": client.get(f"/jobs/{done['id']}/result"),
        }
        for what, r in refused.items():
            is_problem = r.headers.get("content-type") == "application/problem+json"
            problem = r.json() if is_problem else {}
            expect(
                r.status_code == 503
                and int(r.headers.get("retry-after", "0")) > 0
                and problem.get("type") == "/problems/service-unavailable"
                and "object store" in problem.get("detail", ""),
                f"object store down: {what} answers 503 service-unavailable with Retry-After"
                + (f" ({len(data) >> 10} kB)" if what == "an upload" else ""),
                f"{r.status_code} {r.headers} {r.text}",
            )
        after = client.get("/jobs", params={"limit": 200}).raise_for_status().json()["items"]
        expect(
            [j["id"] for j in after] == [j["id"] for j in before],
            "object store down: no job created",
        )
        ready = client.get("/ready")
        expect(ready.status_code == 200, "object store down: /ready (MongoDB, Redis) still 200")


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] not in ("queued", "running"):
            return job
        if time.monotonic() > deadline:
            raise CheckFailed(f"job {job_id} still {job['status']} after {timeout:g}s: {job}")
        time.sleep(0.5)


def job(base_url: str, api_key: str, sample: str, expected_csv: str) -> None:
    data = Path(sample).read_bytes()
    with httpx.Client(base_url=base_url, timeout=30) as anonymous:
        expect(anonymous.get("/health").status_code == 200, "api: /health answers")
        ready = anonymous.get("/ready")
        expect(ready.status_code == 200, "api: /ready (MongoDB and Redis reachable)", ready.text)
        files = {"file": ("rakuten_sample.csv", data, "text/csv")}
        denied = anonymous.post("/jobs/clean", files=files)
        expect(denied.status_code == 401, "api: a submission without X-API-Key is refused (401)")

    with httpx.Client(base_url=base_url, timeout=30, headers={"X-API-Key": api_key}) as client:
        r = client.post("/jobs/clean", files={"file": ("rakuten_sample.csv", data, "text/csv")})
        expect(r.status_code == 202, "api: the real sample is accepted (202)", r.text)
        job_id = r.json()["id"]
        done = wait_job(client, job_id)
        expect(done["status"] == "succeeded", "worker: the job succeeded", done)
        expect(done["progress"]["rows_done"] == SAMPLE_ROWS, "worker: progress counts every row")
        parts = done["progress"].get("parts_total") or 0
        expect(parts >= 2, f"worker: the job was split into {parts} parts (SPLIT_ABOVE_MB)", done)
        check_report(done["report"], "job")
        result = client.get(f"/jobs/{job_id}/result")
        expect(result.status_code == 200, "api: the result downloads")
        check_cleaned(data, result.content, "job")
        expect(
            result.content == Path(expected_csv).read_bytes(),
            "job: the same bytes as the clean-data image wrote",
        )

        r = client.post(
            "/jobs/clean",
            files={"file": ("rakuten_sample.csv", data, "text/csv")},
            data={"output_format": "parquet"},
        )
        expect(r.status_code == 202, "api: a Parquet job is accepted", r.text)
        done = wait_job(client, r.json()["id"])
        expect(done["status"] == "succeeded", "worker: the Parquet job succeeded", done)
        body = client.get(f"/jobs/{done['id']}/result").content
        expect(body[:4] == body[-4:] == b"PAR1", "job: the Parquet result is a Parquet file")

        metrics = client.get("/metrics")
        expect(metrics.status_code == 200 and b"http_request" in metrics.content, "api: /metrics")
        docs = client.get("/docs")
        asset = client.get("/docs-assets/swagger-ui/swagger-ui-bundle.js")
        served = docs.status_code == asset.status_code == 200
        expect(
            served and b"/docs-assets/" in docs.content,
            "api: /docs served with Swagger UI's assets from the image",
        )


def main(argv: list[str]) -> int:
    commands = {"etl": etl, "stack": stack, "job": job, "unavailable": unavailable}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[0]](*argv[1:])
    except (CheckFailed, httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
