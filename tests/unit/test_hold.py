"""The test hold (tests/support/hold.py): it keeps a run at its progress report, still
reporting, and lets go when its file goes, however the engine function is called; or
(`stuck`, `wedged`) keeps it before its first chunk, silent, as a chunk that hangs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hold import STUCK, WEDGED, held, held_pids, holding


def engine(source: str, chunks: int, on_progress=None) -> str:
    for done in range(1, chunks + 1):
        if on_progress:
            on_progress(done, done * 10)
    return source


class HeldRun:
    """The wrapped engine, called in a thread under a hold; its reports and its outcome."""

    def __init__(
        self,
        hold_file: Path,
        call,
        raise_when: threading.Event | None = None,
        mode: str = "progress",
    ) -> None:
        self.reports: list[tuple[int, int]] = []
        self.outcome: list[object] = []
        self.reporting = threading.Event()  # three reports seen: held and still reporting
        self.ended = threading.Event()
        self.raise_when = raise_when or threading.Event()
        self.thread = threading.Thread(target=self._run, args=(hold_file, call, mode))

    def _report(self, rows: int, nbytes: int) -> None:
        self.reports.append((rows, nbytes))
        if len(self.reports) >= 3:
            self.reporting.set()
        if self.raise_when.is_set():
            raise RuntimeError("cancelled")

    def _run(self, hold_file: Path, call, mode: str) -> None:
        try:
            self.outcome.append(call(holding(engine, hold_file, mode), self._report))
        except Exception as exc:
            self.outcome.append(exc)
        finally:
            self.ended.set()


@pytest.mark.parametrize(
    "call",
    [
        lambda f, report: f("in.csv", 2, report),
        lambda f, report: f("in.csv", 2, on_progress=report),
        lambda f, report: f(source="in.csv", chunks=2, on_progress=report),
    ],
    ids=["positional", "keyword", "all-keywords"],
)
def test_held_at_the_first_report_then_released(tmp_path: Path, call) -> None:
    hold_file = tmp_path / "hold"
    run = HeldRun(hold_file, call)
    with held(hold_file):
        run.thread.start()
        assert run.reporting.wait(30), "the held run stopped reporting"
        assert not run.ended.is_set() and held_pids(hold_file)
    assert run.ended.wait(30)
    assert run.outcome == ["in.csv"]
    assert set(run.reports[:-1]) == {(1, 10)} and run.reports[-1] == (2, 20)


def test_what_the_report_raises_ends_the_held_run(tmp_path: Path) -> None:
    hold_file = tmp_path / "hold"
    cancel = threading.Event()
    run = HeldRun(hold_file, lambda f, report: f("in.csv", 2, report), raise_when=cancel)
    with held(hold_file):
        run.thread.start()
        assert run.reporting.wait(30)
        cancel.set()
        assert run.ended.wait(30), "still held after its report raised"
    assert [type(o) for o in run.outcome] == [RuntimeError]
    assert set(run.reports) == {(1, 10)}  # the second chunk never ran


def test_no_file_no_hold(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    assert holding(engine, tmp_path / "absent")("in.csv", 3, lambda *a: seen.append(a)) == "in.csv"
    assert seen == [(1, 10), (2, 20), (3, 30)]


def test_importing_it_without_the_variable_wraps_nothing() -> None:
    from src.data import pipeline, split

    assert not hasattr(split.clean_part, "__wrapped__")
    assert not hasattr(pipeline.clean_file, "__wrapped__")


class SoftLimit(Exception):
    """What Celery's soft time limit raises: from a signal handler, wherever the run is."""


@pytest.fixture
def soft_limit_signal() -> Iterator[list[int]]:
    """SIGALRM raises SoftLimit in the main thread, as Celery's SIGUSR1 does in a pool
    process; the list counts the signals that came."""
    came: list[int] = []

    def raise_soft_limit(signum: int, frame: object) -> None:
        came.append(signum)
        raise SoftLimit

    previous = signal.signal(signal.SIGALRM, raise_soft_limit)
    try:
        yield came
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def remove_when(hold_file: Path, ready) -> threading.Thread:
    """Remove the hold file from a thread once `ready()` holds (or after 30 s)."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        hold_file.unlink(missing_ok=True)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", [STUCK, WEDGED])
def test_stuck_holds_before_the_first_chunk_without_reporting(tmp_path: Path, mode: str) -> None:
    hold_file = tmp_path / "hold"
    run = HeldRun(hold_file, lambda f, report: f("in.csv", 2, report), mode=mode)
    with held(hold_file):
        run.thread.start()
        deadline = time.monotonic() + 30
        while not held_pids(hold_file):
            assert time.monotonic() < deadline, "the run never reached the hold"
            time.sleep(0.01)
        assert not run.ended.wait(0.2) and run.reports == []  # held, and silent
    assert run.ended.wait(30)
    assert run.outcome == ["in.csv"] and run.reports == [(1, 10), (2, 20)]


def test_what_python_raises_while_stuck_ends_the_run(
    tmp_path: Path, soft_limit_signal: list[int]
) -> None:
    hold_file = tmp_path / "hold"
    seen: list[tuple[int, int]] = []
    with held(hold_file):
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(SoftLimit):
            holding(engine, hold_file, STUCK)("in.csv", 2, lambda *a: seen.append(a))
    assert soft_limit_signal and seen == []  # the engine never ran


def test_wedged_is_deaf_to_it_until_the_file_goes(
    tmp_path: Path, soft_limit_signal: list[int]
) -> None:
    hold_file = tmp_path / "hold"
    seen: list[tuple[int, int]] = []
    with held(hold_file):
        remover = remove_when(hold_file, lambda: bool(soft_limit_signal))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        assert holding(engine, hold_file, WEDGED)("in.csv", 2, lambda *a: seen.append(a)) == (
            "in.csv"
        )
        remover.join(30)
    assert soft_limit_signal and seen == [(1, 10), (2, 20)]


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stuck"):
        holding(engine, tmp_path / "hold", "frozen")
