"""The job service end to end: HTTP API → Redis → Celery worker → store → result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests.integration.conftest import hold_path, upload, wait_held, wait_job
from tests.support.hold import held
from tests.support.inputs import make_input
from tests.support.services import VENV_BIN, Stack, stop


def test_upload_roundtrip_matches_cli(api: httpx.Client, sample_path: Path, tmp_path: Path) -> None:
    options = {"lowercase": True, "drop_duplicates": True}
    r = upload(api, sample_path, json.dumps(options))
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded")
    done = wait_job(api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["progress"]["rows_done"] == done["progress"]["rows_total"] == 672
    assert done["report"]["rows_in"] == 672
    assert done["started_at"] and done["finished_at"]

    result = api.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 200
    assert "rakuten_sample.cleaned.csv" in result.headers["content-disposition"]
    # the same bytes as the clean-data command gives for the same input and options
    expected = tmp_path / "expected.csv"
    cli = subprocess.run(
        [
            str(VENV_BIN / "clean-data"),
            str(sample_path),
            "-o",
            str(expected),
            "-q",
            "--lowercase",
            "--drop-duplicates",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert result.content == expected.read_bytes()


def test_source_under_data_dir_to_parquet(
    api: httpx.Client, stack: Stack, sample_path: Path
) -> None:
    shutil.copy(sample_path, stack.data_dir / "raw" / "X_test.csv")
    r = api.post("/jobs/clean", json={"source": "raw/X_test.csv", "output_format": "parquet"})
    assert r.status_code == 202, r.text
    done = wait_job(api, r.json()["id"])
    assert done["status"] == "succeeded", done
    body = api.get(f"/jobs/{done['id']}/result").content
    assert body[:4] == b"PAR1"
    assert (stack.data_dir / "raw" / "X_test.csv").exists()  # a named source is not consumed


def test_bad_file_ends_failed_with_readable_error(api: httpx.Client, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = upload(api, bad)
    assert r.status_code == 202
    done = wait_job(api, r.json()["id"])
    assert done["status"] == "failed"
    assert "missing expected column(s): designation, description" in done["error"]
    assert api.get(f"/jobs/{done['id']}/result").status_code == 409


@pytest.mark.parametrize(
    ("source", "status", "words"),
    [
        ("/etc/passwd", 400, "relative path"),
        ("../../etc/passwd", 400, "'..'"),
        ("raw/escape", 400, "leaves DATA_DIR"),
        ("raw/missing.csv", 404, "not found"),
    ],
)
def test_source_paths_are_confined(
    api: httpx.Client, stack: Stack, source: str, status: int, words: str
) -> None:
    link = stack.data_dir / "raw" / "escape"
    if not link.is_symlink():
        link.symlink_to("/etc/hostname")
    r = api.post("/jobs/clean", json={"source": source})
    assert r.status_code == status
    assert words in r.json()["detail"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ('{"min_length": -1}', "min_length"),
        ('{"no_such_option": true}', "no_such_option"),
        ("{not json", "invalid options"),
        ('{"encoding": "ebcdic"}', "encoding"),
    ],
)
def test_bad_options_422(api: httpx.Client, sample_path: Path, options: str, words: str) -> None:
    r = upload(api, sample_path, options)
    assert r.status_code == 422
    assert words in r.json()["detail"]


def test_unsupported_types_415(api: httpx.Client, tmp_path: Path) -> None:
    sheet = tmp_path / "x.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    r = upload(api, sheet)
    assert r.status_code == 415 and ".xlsx" in r.json()["detail"]
    r = api.post("/jobs/clean", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_unknown_job_404(api: httpx.Client) -> None:
    for path in ("/jobs/nope", "/jobs/nope/result", "/jobs/nope/events"):
        r = api.get(path)
        assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert api.post("/jobs/nope/cancel").status_code == 404


def test_idempotency_key(api: httpx.Client, sample_path: Path) -> None:
    key = {"Idempotency-Key": f"k-{os.getpid()}-{id(api)}"}
    first = upload(api, sample_path, '{"lowercase": true}', headers=key)
    again = upload(api, sample_path, '{"lowercase": true}', headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    other = upload(api, sample_path, '{"lowercase": false}', headers=key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]


def test_list_newest_first_with_cursor(api: httpx.Client, sample_path: Path) -> None:
    ids = [upload(api, sample_path).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait_job(api, job_id)
    page1 = api.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page1["items"]] == ids[::-1][:2]
    page2 = api.get("/jobs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert page2["items"][0]["id"] == ids[0]
    succeeded = api.get("/jobs", params={"status": "succeeded", "limit": 200}).json()["items"]
    assert succeeded and all(j["status"] == "succeeded" for j in succeeded)
    assert api.get("/jobs", params={"status": "bogus"}).status_code == 422
    assert api.get("/jobs", params={"cursor": "!!"}).status_code == 400


def test_cancel_running_job_at_chunk_boundary(
    api: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    """Held after its first chunk (tests/support/hold.py), the job cannot end before the cancel."""
    big = make_input(tmp_path / "big.csv", times=3)
    with held(hold_path(stack)) as hold:
        job_id = upload(api, big, '{"chunk_rows": 200}').json()["id"]
        wait_held(api, job_id, hold)
        c = api.post(f"/jobs/{job_id}/cancel")
        assert c.status_code == 200
        done = wait_job(api, job_id)  # the held run still sees the cancel at its next report
    assert done["status"] == "cancelled", done
    assert done["progress"]["rows_done"] < 3 * 672
    assert api.get(f"/jobs/{job_id}/result").status_code == 409
    again = api.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_queued_job_cancel_and_result_409(
    stack: Stack, api: httpx.Client, sample_path: Path
) -> None:
    # An API on another database: the workers never find its jobs, so they stay queued.
    proc, base = stack.start_api(MONGO_DB="cleaning_unserved")
    try:
        with httpx.Client(base_url=base, timeout=30) as other:
            job = upload(other, sample_path).json()
            assert other.get(f"/jobs/{job['id']}").json()["status"] == "queued"
            assert other.get(f"/jobs/{job['id']}/result").status_code == 409
            r = other.post(f"/jobs/{job['id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
    finally:
        stop(proc)


def test_events_stream_until_done(api: httpx.Client, sample_path: Path) -> None:
    job_id = upload(api, sample_path).json()["id"]
    events = []
    with api.stream("GET", f"/jobs/{job_id}/events", timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events, "no event"
    assert events[-1]["status"] == "succeeded"
    assert all(e["id"] == job_id for e in events)


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Recorder.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_callback_delivered_and_failure_recorded(api: httpx.Client, sample_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job_id = upload(api, sample_path, callback_url=url).json()["id"]
        done = wait_job(api, job_id, lambda j: j["callback_status"] == "delivered")
        assert done["status"] == "succeeded"
        assert [e["id"] for e in _Recorder.received] == [job_id]
        assert _Recorder.received[0]["status"] == "succeeded"
    finally:
        server.shutdown()
    dead = f"http://127.0.0.1:{server.server_port}/gone"  # nothing listens there now
    job_id = upload(api, sample_path, callback_url=dead).json()["id"]
    done = wait_job(api, job_id, lambda j: j["callback_status"] == "failed", timeout=90)
    assert done["status"] == "succeeded"  # a failed delivery never fails the job
    assert done["callback_error"]


def test_health_ready_metrics_docs(api: httpx.Client) -> None:
    assert api.get("/health").json() == {"status": "ok"}
    ready = api.get("/ready")
    assert ready.status_code == 200 and ready.json()["mongodb"] == "ok"
    assert (
        "http_requests_total" in api.get("/metrics").text or api.get("/metrics").status_code == 200
    )
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    submit = spec["paths"]["/jobs/clean"]["post"]
    assert {"multipart/form-data", "application/json"} <= set(submit["requestBody"]["content"])
    for code in ("202", "413", "415", "422", "503"):
        assert code in submit["responses"]


def test_api_keys(stack: Stack, sample_path: Path) -> None:
    proc, base = stack.start_api(API_KEYS="k1, k2")
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/jobs").status_code == 401
            assert c.get("/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
            assert c.get("/jobs", headers={"X-API-Key": "k2"}).status_code == 200
            assert upload(c, sample_path).status_code == 401
            for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
                assert c.get(path).status_code == 200, path
    finally:
        stop(proc)


def test_upload_over_limit_413(stack: Stack, tmp_path: Path) -> None:
    proc, base = stack.start_api(MAX_UPLOAD_MB="1")
    big = tmp_path / "big.csv"
    big.write_bytes(b",designation,description\n" + b"1,abc,def\n" * 300_000)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            r = upload(c, big)
            assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["detail"]
    finally:
        stop(proc)
    assert not any((stack.data_dir / "jobs").glob("*/input.csv.*"))
