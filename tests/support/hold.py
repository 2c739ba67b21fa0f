"""Hold cleaning work in flight, so a test can kill or cancel it without racing the engine.

A test that waits to see a job or part running and then acts on it loses when the
work ends first (a faster engine, a busy machine). A real Celery worker started with
`celery worker ... -I tests.support.hold` and `CLEANING_TEST_HOLD_FILE=<path>` in its
environment (`Stack.start_worker(hold_file=...)`) instead keeps every run that reaches
a progress report there while that file exists: it calls the run's real progress
callback again every `POLL_SECONDS`, so the heartbeat and progress still reach the
store and a cancel or a lost claim still stops the run, as between real chunks.

`CLEANING_TEST_HOLD_MODE` in the worker's environment (an extra keyword argument of
`Stack.start_worker`) holds a run stuck inside a chunk instead, never reporting
progress: `stuck` blocks before the cleaning function is called, while the file
exists, as a slow chunk would (what Python raises there, such as Celery's soft time
limit, ends the run); `wedged` blocks the same way but swallows what Python raises
there, as native code that never returns would: only a kill (Celery's hard time
limit) or the file's removal ends it.

Wrapped: `src.data.split.clean_part` (a part) and `src.data.pipeline.clean_file`
(a whole job), as module attributes: the job code must call them through their
modules (`split.clean_part(...)`), or a name imported earlier escapes the wrapper.
Without the variable, importing this module changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOLD_ENV = "CLEANING_TEST_HOLD_FILE"
HOLD_MODE_ENV = "CLEANING_TEST_HOLD_MODE"
PROGRESS, STUCK, WEDGED = "progress", "stuck", "wedged"
POLL_SECONDS = 0.05


def holding(real: Callable[..., Any], hold_file: Path, mode: str = PROGRESS) -> Callable[..., Any]:
    """`real` (a cleaning function taking `on_progress`) with its progress callback held,
    or (`stuck`, `wedged`) held before it runs at all."""
    if mode not in (PROGRESS, STUCK, WEDGED):
        raise ValueError(f"{HOLD_MODE_ENV}={mode!r}: expected {PROGRESS}, {STUCK} or {WEDGED}")
    signature = inspect.signature(real)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if mode != PROGRESS and hold_file.exists():
            _record(hold_file)
            _block(hold_file, deaf=mode == WEDGED)
        call = signature.bind(*args, **kwargs)  # positional or keyword, as the caller chose
        report = call.arguments.get("on_progress")
        if report is not None:
            call.arguments["on_progress"] = _held(report, hold_file)
        return real(*call.args, **call.kwargs)

    return wrapper


def _held(report: Callable[..., None], hold_file: Path) -> Callable[..., None]:
    def on_progress(*args: Any) -> None:
        report(*args)
        if hold_file.exists():
            _record(hold_file)
        while hold_file.exists():
            time.sleep(POLL_SECONDS)
            report(*args)  # what it raises (cancelled, claim lost) ends the run

    return on_progress


def _block(hold_file: Path, deaf: bool) -> None:
    """Wait while the file exists, without a progress report; `deaf` to exceptions."""
    while True:
        try:
            if not hold_file.exists():
                return
            time.sleep(POLL_SECONDS)
        except Exception:
            if not deaf:
                raise


def _record(hold_file: Path) -> None:
    """Note this process in `<hold file>.pids`: a test that sees none knows the hold missed."""
    with contextlib.suppress(OSError), pids_file(hold_file).open("a") as fh:
        fh.write(f"{os.getpid()}\n")


def pids_file(hold_file: Path) -> Path:
    return hold_file.with_name(f"{hold_file.name}.pids")


def install(hold_file: Path, mode: str = PROGRESS) -> None:
    from src.data import pipeline, split

    split.clean_part = holding(split.clean_part, hold_file, mode)
    pipeline.clean_file = holding(pipeline.clean_file, hold_file, mode)


@contextlib.contextmanager
def held(hold_file: Path) -> Iterator[Path]:
    """Runs of workers started with this `hold_file` stay at their first progress report
    (or before their first chunk: `stuck`, `wedged`) until the block ends."""
    pids_file(hold_file).unlink(missing_ok=True)
    hold_file.touch()
    try:
        yield hold_file
    finally:
        hold_file.unlink(missing_ok=True)


def held_pids(hold_file: Path) -> set[int]:
    """The processes that held a run since `held` began (for failure messages)."""
    with contextlib.suppress(FileNotFoundError):
        return {int(p) for p in pids_file(hold_file).read_text().split()}
    return set()


if path := os.environ.get(HOLD_ENV):
    install(Path(path), os.environ.get(HOLD_MODE_ENV) or PROGRESS)
