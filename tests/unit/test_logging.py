"""Log formats: text unchanged by default, one JSON object a line with LOG_FORMAT=json,
and the job context (`log_context`) on every record logged inside it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from src.api.logcontext import install_log_context
from src.core.logging import FORMAT, log_context, make_handler, setup_logging


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own (not propagating), so the test sees only its handler's output."""
    found = logging.getLogger("tests.unit.test_logging")
    found.propagate = False
    found.setLevel(logging.DEBUG)
    yield found
    found.handlers.clear()


def lines_of(log_format: str, logger: logging.Logger, emit) -> list[str]:
    stream = io.StringIO()
    logger.addHandler(make_handler(log_format, stream))
    emit()
    return stream.getvalue().splitlines()


def test_json_is_one_object_a_line_with_the_context(logger: logging.Logger) -> None:
    def emit() -> None:
        logger.info("outside")
        with log_context(job_id="j1", owner="acme", worker="host:42"):
            logger.warning("cleaned %d rows\nsecond line", 10)
            with log_context(part="3"):
                try:
                    raise ValueError("bad row")
                except ValueError:
                    logger.exception("part failed")
        logger.info("after", extra={"job_id": "explicit"})

    lines = lines_of("json", logger, emit)
    assert len(lines) == 4  # a newline in a message or a traceback stays inside its object
    outside, cleaned, failed, after = (json.loads(line) for line in lines)
    assert outside["message"] == "outside"
    assert outside["level"] == "INFO"
    assert outside["logger"] == "tests.unit.test_logging"
    assert outside["time"].endswith("+00:00")
    assert not {"job_id", "part", "owner", "worker"} & set(outside)  # unknown: left out
    assert cleaned["message"] == "cleaned 10 rows\nsecond line"
    assert (cleaned["job_id"], cleaned["owner"], cleaned["worker"]) == ("j1", "acme", "host:42")
    assert "part" not in cleaned
    assert failed["part"] == "3" and failed["job_id"] == "j1"  # nested blocks add up
    assert "ValueError: bad row" in failed["exc_info"]
    assert after["job_id"] == "explicit" and "worker" not in after  # the block ended


def test_text_is_the_plain_format_and_the_context_follows_the_message(
    logger: logging.Logger,
) -> None:
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "cleaned %d", (3,), None)
    plain = logging.Formatter(FORMAT).format(record)
    with log_context(job_id="j1", part="2", worker="host:42"):
        lines = lines_of("text", logger, lambda: logger.info("cleaned %d", 3))
    assert lines[0].split(" ", 2)[2] == plain.split(" ", 2)[2] + " [job=j1 part=2 worker=host:42]"
    logger.handlers.clear()
    assert lines_of("text", logger, lambda: logger.info("cleaned %d", 3))[0].endswith(
        "INFO tests.unit.test_logging: cleaned 3"
    )


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's capture handlers (setup_logging leaves those alone);
    inside the test, since pytest adds them after the fixtures."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield root
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_setup_reads_log_format_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    with bare_root() as root:
        setup_logging()
        (handler,) = root.handlers
        assert handler.formatter is not None and handler.formatter._fmt == FORMAT
        assert root.level == logging.INFO

        monkeypatch.setenv("LOG_FORMAT", "json")
        monkeypatch.setenv("LOG_LEVEL", "warning")
        setup_logging()  # again: its own handler replaced, not added to
        (handler,) = root.handlers
        stream = io.StringIO()
        handler.setStream(stream)  # type: ignore[attr-defined]
        with log_context(job_id="j9"):
            logging.getLogger("x").warning("w")
            logging.getLogger("x").info("dropped")
        assert root.level == logging.WARNING
    assert [json.loads(line)["job_id"] for line in stream.getvalue().splitlines()] == ["j9"]


def test_setup_leaves_a_root_logger_with_another_handler_alone() -> None:
    with bare_root() as root:
        other = logging.NullHandler()
        root.addHandler(other)
        setup_logging()
        assert root.handlers == [other]


@pytest.mark.anyio
async def test_api_requests_for_a_job_log_with_its_id(logger: logging.Logger) -> None:
    """Routes as the API has them: a router included with the /jobs prefix."""
    router = APIRouter(prefix="/jobs")

    @router.get("/{job_id}")
    async def get_job(job_id: str) -> dict[str, str]:
        logger.info("read")
        return {}

    @router.get("/{job_id}/result")
    def result(job_id: str) -> dict[str, str]:  # sync: run in a thread, context copied
        logger.info("result")
        return {}

    @router.post("/clean")
    async def submit() -> dict[str, str]:
        logger.info("submitted")
        return {}

    app = FastAPI()
    app.include_router(router)
    install_log_context(app)
    stream = io.StringIO()
    logger.addHandler(make_handler("json", stream))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/jobs/abc")).status_code == 200
        assert (await client.get("/jobs/def/result")).status_code == 200
        assert (await client.post("/jobs/clean")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
    logger.info("after the requests")
    seen = [json.loads(line).get("job_id", "-") for line in stream.getvalue().splitlines()]
    assert seen == ["abc", "def", "-", "-"]
