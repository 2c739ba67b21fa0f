"""One log setup for the API and the workers: text lines, or JSON lines with LOG_FORMAT=json.

Text (the default): `time level logger: message`, then ` [job=… part=… owner=… worker=…]`
when a job is known. JSON: one object a line (`time`, `level`, `logger`, `message`, and
`job_id`, `part`, `owner`, `worker` when known), for a log collector to index. What is
known comes from `log_context(...)`, a `contextvars` context manager the task or request
opens, and a filter on the handler copies it onto every record, so code that logs needs
no extra arguments.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("job_id", "part", "owner", "worker")
TEXT_LABELS = {"job_id": "job"}  # ` [job=…]`, shorter than the JSON key

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every record logged inside the block (in this thread or task) carries `fields`.

    Nested blocks add to the outer one; a None value is left out. A value may be a
    function of no arguments, called for each record (a value known only later, such
    as the API's job id once the request is routed).
    """
    known = {k: v for k, v in fields.items() if v is not None}
    token = _context.set({**_context.get({}), **known})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current `log_context` onto each record (fields set explicitly win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get({}).items():
            if hasattr(record, key):
                continue
            if callable(value):
                value = value()
            if value is not None:
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """FORMAT, with the record's context on the message's line (before any traceback)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        known = [
            f"{TEXT_LABELS.get(k, k)}={getattr(record, k)}"
            for k in CONTEXT_FIELDS
            if getattr(record, k, None) is not None
        ]
        return f"{line} [{' '.join(known)}]" if known else line


def json_formatter() -> logging.Formatter:
    """python-json-logger: the record's fields plus any extra ones (the context among them)."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's coloured copy
        json_ensure_ascii=False,
    )


def make_handler(log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter(FORMAT))
    handler.addFilter(ContextFilter())
    handler._cleaning_handler = True  # type: ignore[attr-defined]  # ours, to replace later
    return handler


def setup_logging() -> None:
    """The root logger's handler from LOG_LEVEL (INFO) and LOG_FORMAT (text, or json).

    Like `logging.basicConfig`, it leaves a root logger that has another handler alone
    (a test's capture); it replaces its own, so calling it again is harmless. With JSON,
    uvicorn's loggers go through the root logger too, so the API logs one format.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_cleaning_handler", False)]
    if len(ours) != len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    log_format = os.environ.get("LOG_FORMAT", "").strip().lower() or "text"
    root.addHandler(make_handler(log_format))
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    if log_format == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
