"""The test hold (tests/support/hold.py): it keeps a run at its progress report, still
reporting, and lets go when its file goes, however the engine function is called."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.support.hold import held, held_pids, holding


def engine(source: str, chunks: int, on_progress=None) -> str:
    for done in range(1, chunks + 1):
        if on_progress:
            on_progress(done, done * 10)
    return source


class HeldRun:
    """The wrapped engine, called in a thread under a hold; its reports and its outcome."""

    def __init__(self, hold_file: Path, call, raise_when: threading.Event | None = None) -> None:
        self.reports: list[tuple[int, int]] = []
        self.outcome: list[object] = []
        self.reporting = threading.Event()  # three reports seen: held and still reporting
        self.ended = threading.Event()
        self.raise_when = raise_when or threading.Event()
        self.thread = threading.Thread(target=self._run, args=(hold_file, call))

    def _report(self, rows: int, nbytes: int) -> None:
        self.reports.append((rows, nbytes))
        if len(self.reports) >= 3:
            self.reporting.set()
        if self.raise_when.is_set():
            raise RuntimeError("cancelled")

    def _run(self, hold_file: Path, call) -> None:
        try:
            self.outcome.append(call(holding(engine, hold_file), self._report))
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
