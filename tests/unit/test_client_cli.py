"""The Python client and `clean-data --remote` against a stand-in service (httpx.MockTransport):
problem documents, the event stream and its fallback, atomic downloads, exit codes.

tests/integration/test_client.py drives the real service.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from src.client import ApiError, CleaningClient, CleaningOptions, Job, JobFailed, JobStatus
from src.data.clean_data import run

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = "019ac5f0a3b2c4d5e6f7a8"
SSE = {"content-type": "text/event-stream; charset=utf-8"}
PROBLEM = {"content-type": "application/problem+json"}

Handler = Callable[[httpx.Request], httpx.Response]


def job(status: str = "queued", rows: int = 0, error: str | None = None) -> Job:
    return Job(
        id=JOB_ID,
        status=JobStatus(status),
        created_at=datetime.now(UTC),
        progress={"rows_done": rows, "bytes_done": rows * 10, "bytes_total": 6720},
        error=error,
    )


def event(j: Job) -> bytes:
    return f"event: job\r\ndata: {j.model_dump_json()}\r\n\r\n".encode()


def client_for(handler: Handler) -> CleaningClient:
    return CleaningClient("http://svc", api_key="k", transport=httpx.MockTransport(handler))


def problem(status: int, slug: str, title: str, detail: str) -> httpx.Response:
    body = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}
    return httpx.Response(status, headers=PROBLEM, json=body)


def test_api_error_carries_the_problem_document() -> None:
    detail = f"job {JOB_ID} not found"
    c = client_for(lambda r: problem(404, "job-not-found", "No such job", detail))
    with pytest.raises(ApiError) as caught:
        c.get(JOB_ID)
    e = caught.value
    assert (e.status, e.type, e.title, e.detail) == (
        404,
        "/problems/job-not-found",
        "No such job",
        detail,
    )
    assert e.instance == f"/jobs/{JOB_ID}"  # the request path, when the service gave none
    assert str(e) == f"404 No such job: {detail}"
    assert e.errors == [] and e.retry_after is None


def test_api_error_from_a_page_that_is_no_problem_document() -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>\n nginx </body></html>"
    c = client_for(lambda r: httpx.Response(502, html=page, headers={"Retry-After": "7"}))
    with pytest.raises(ApiError) as caught:
        c.cancel(JOB_ID)
    e = caught.value
    assert (e.status, e.title, e.type) == (502, "Bad Gateway", "about:blank")
    assert "502 Bad Gateway" in e.detail and "\n" not in e.detail
    assert e.retry_after == 7.0


def test_submit_sends_the_file_options_key_and_format(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(202, json=job().model_dump(mode="json"))

    src = tmp_path / "in.csv"
    src.write_bytes(b",designation,description\n1,a,b\n")
    c = client_for(handler)
    c.submit(src, CleaningOptions(lowercase=True), "parquet", idempotency_key="once")
    c.submit_source("raw/X.csv", {"min_length": 3}, callback_url="http://hook/x")
    upload, source = seen
    assert upload.url == "http://svc/jobs/clean" and upload.headers["X-API-Key"] == "k"
    assert upload.headers["Idempotency-Key"] == "once"
    body = upload.content
    assert b'filename="in.csv"' in body and b"1,a,b" in body and b"text/csv" in body
    assert b'{"lowercase": true}' in body  # only the fields set, not every default
    assert b'name="output_format"\r\n\r\nparquet' in body
    assert "Idempotency-Key" not in source.headers
    assert json.loads(source.content) == {
        "source": "raw/X.csv",
        "output_format": "csv",
        "options": {"min_length": 3},
        "callback_url": "http://hook/x",
    }


def test_wait_follows_the_event_stream() -> None:
    states = [job("queued"), job("running", 5), job("running", 5), job("succeeded", 672)]
    polls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            assert request.headers["accept"] == "text/event-stream"
            stream = b": ping\r\n\r\n".join(event(j) for j in states)
            return httpx.Response(200, headers=SSE, content=stream)
        polls.append(request)
        return httpx.Response(200, json=states[-1].model_dump(mode="json"))

    seen: list[Job] = []
    done = client_for(handler).wait(JOB_ID, on_progress=seen.append)
    assert done == states[-1] and not polls
    assert [(j.status, j.progress.rows_done) for j in seen] == [
        ("queued", 0),
        ("running", 5),
        ("succeeded", 672),
    ]


@pytest.mark.parametrize(
    "events",
    [
        lambda: httpx.Response(200, json={"not": "a stream"}),  # a proxy that answers otherwise
        lambda: httpx.Response(502, html="<p>Bad gateway</p>"),
        lambda: httpx.Response(200, headers=SSE, content=event(job("queued"))),  # cut short
    ],
    ids=["not-sse", "502", "cut"],
)
def test_wait_falls_back_to_get_wait(events: Callable[[], httpx.Response]) -> None:
    answers = iter([job("running", 5), job("running", 5), job("failed", 5, "bad input")])
    waits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return events()
        waits.append(request.url.params["wait"])
        return httpx.Response(200, json=next(answers).model_dump(mode="json"))

    seen: list[Job] = []
    done = client_for(handler).wait(JOB_ID, on_progress=seen.append)
    assert done.status == "failed" and done.error == "bad input"
    assert waits == ["1.0"] * 3  # a fresh job every second while someone shows progress
    assert [j.status for j in seen][-2:] == ["running", "failed"]
    waits.clear()
    answers = iter([job("succeeded", 5)])
    assert client_for(handler).wait(JOB_ID).status == "succeeded"
    assert waits == ["60.0"]  # no one to show progress to: the longest wait the API allows


def test_wait_keeps_its_deadline_while_the_stream_is_silent() -> None:
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        yield event(job("queued"))
        release.wait(30)  # a queued job: the server has nothing more to say

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers=SSE, content=silent())
        release.wait(float(request.url.params["wait"]))  # GET ?wait= until time is up
        return httpx.Response(200, json=job("queued").model_dump(mode="json"))

    try:
        with pytest.raises(TimeoutError, match=f"job {JOB_ID} still queued after 0.3s"):
            client_for(handler).wait(JOB_ID, timeout=0.3)
    finally:
        release.set()


def test_download_is_atomic(tmp_path: Path) -> None:
    body = b"a,b\n" * 1000
    answers = [
        httpx.Response(200, content=body),
        httpx.Response(200, headers={"content-length": str(len(body) + 5)}, content=body),
        problem(409, "job-state-conflict", "Not now", "job is running"),
    ]
    c = client_for(lambda r: answers.pop(0))
    dest = tmp_path / "out" / "r.csv"
    assert c.download(JOB_ID, dest) == dest and dest.read_bytes() == body
    dest.unlink()
    with pytest.raises(httpx.RemoteProtocolError, match="cut short"):
        c.download(JOB_ID, dest)
    with pytest.raises(ApiError, match="409 Not now: job is running"):
        c.download(JOB_ID, dest)
    assert list(dest.parent.iterdir()) == []  # no result, no temporary file


def test_clean_raises_job_failed_and_writes_nothing(tmp_path: Path) -> None:
    final = job("cancelled")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=job().model_dump(mode="json"))
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers=SSE, content=event(final))
        raise AssertionError(f"unexpected {request.method} {request.url}")

    src = tmp_path / "in.csv"
    src.write_text("x")
    with pytest.raises(JobFailed, match=f"job {JOB_ID} was cancelled") as caught:
        client_for(handler).clean(src, tmp_path / "out.csv")
    assert caught.value.job == final and not (tmp_path / "out.csv").exists()
    assert str(JobFailed(job("failed", error="missing expected column(s): x"))) == (
        "missing expected column(s): x"
    )


def test_the_client_needs_no_engine() -> None:
    code = (
        "import sys, src.client, src.client.cli\n"
        "assert not {'polars', 'pandas', 'pyarrow'} & set(sys.modules), sys.modules.keys()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- clean-data --remote: what needs no service ----------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_remote_unreachable_exit_3(
    sample_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "o.csv"
    assert run(["--remote", url, str(sample_path), "-o", str(out)]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"clean-data: error: service unreachable at {url}"
    )
    assert not out.exists()


def test_cli_remote_missing_input_file_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.csv"
    assert run(["--remote", "http://127.0.0.1:9", str(missing), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("clean-data: error: No such file or directory") and str(missing) in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--remote", "ftp://host", "in.csv"], "not an http:// or https:// URL"),
        (["--remote", "http://127.0.0.1:9"], "--remote needs INPUT"),
        (["--remote", "http://127.0.0.1:9", "in.csv", "--min-length", "-1"], "--min-length"),
    ],
)
def test_cli_remote_bad_command_line_exit_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(args)
    assert exited.value.code == 2 and words in capsys.readouterr().err
