"""Checks of scripts/e2e-docker.sh against the running containers (host side).

    python scripts/e2e-docker/checks.py etl RAW_DIR CLEANED_DIR
    python scripts/e2e-docker/checks.py job BASE_URL API_KEY SAMPLE EXPECTED_CSV

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
    commands = {"etl": etl, "job": job}
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
