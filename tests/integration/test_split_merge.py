"""A split job's merge goes as its parts finish: in order, by whichever worker finishes
them, and is taken over where a merger died.

Driven in-process against the real store and DATA_DIR, with no worker: the order in
which parts finish is the test's, never the machine's, and every check is on a state
(how far the merge got, the job's status, the result's bytes).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.core.storage import open_storage
from src.data import part_merge
from src.data.options import CleaningOptions
from src.data.pipeline import clean_file
from src.jobs import layout, merge
from src.jobs.context import JobContext, Outcome, Senders
from src.jobs.merge import run_merge
from src.jobs.model import new_job_id
from src.jobs.parts import run_part
from src.jobs.records import new_job_doc, part_id
from src.jobs.run import run_job
from src.jobs.store import JobStore
from src.jobs.sweep import sweep
from tests.integration.conftest import settings_for, stack_or_skip
from tests.integration.test_split import REPORT_FIELDS
from tests.support.inputs import make_input
from tests.support.services import Stack

OPTIONS = CleaningOptions(drop_duplicates=True, lowercase=True, chunk_rows=200)


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_or_skip(tmp_path_factory.mktemp("split-merge"), MONGO_DB="split_merge") as s:
        yield s


@pytest.fixture
def direct(mstack: Stack) -> Iterator[tuple[JobContext, dict[str, list[str]]]]:
    """A context on the stack's store and folder whose senders record what they would
    queue; the sample three times over is split into about 60 parts."""
    settings = settings_for(mstack, split_above_mb=0.05, part_mb=0.02)
    sent: dict[str, list[str]] = {"clean": [], "part": [], "merge": []}
    senders = Senders(sent["clean"].append, sent["part"].append, sent["merge"].append)
    store = JobStore(settings)
    merge._states.clear()
    yield JobContext(store, settings, open_storage(settings), "planner:1", senders), sent
    store.close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_input(tmp_path / "thrice.csv", times=3)


def split_job(ctx: JobContext, source: Path, sent: dict[str, list[str]]) -> tuple[str, list[str]]:
    """A job of `source` as the API leaves one, claimed and split by `run_job`."""
    job_id = new_job_id()
    rel = layout.input_relpath(job_id, ".csv")
    target = ctx.settings.data_dir / rel
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    doc = new_job_doc(
        job_id=job_id,
        input_relpath=rel,
        input_name=source.name,
        options=OPTIONS.model_dump(mode="json"),
        output_format="csv",
        retention_hours=1,
    )
    ctx.store.jobs.insert_one(doc)
    assert run_job(ctx, job_id) is Outcome.DONE
    parts = [p for p in sent["part"] if p.startswith(f"{job_id}.")]
    assert len(parts) >= 10
    return job_id, parts


def worker(ctx: JobContext, n: int) -> JobContext:
    return dataclasses.replace(ctx, worker=f"w:{n}")


def merged_parts(ctx: JobContext, job_id: str) -> int:
    return ctx.store.jobs.find_one({"_id": job_id}).get("merged_parts", 0)


def assert_same_as_one_run(ctx: JobContext, job_id: str, source: Path, tmp_path: Path) -> None:
    job = ctx.store.get(job_id)
    assert job is not None and job["status"] == "succeeded", job
    expected = tmp_path / "expected.csv"
    report = clean_file(source, expected, OPTIONS).model_dump(mode="json")
    result = ctx.settings.data_dir / layout.result_relpath(job_id, "csv")
    assert result.read_bytes() == expected.read_bytes()
    assert {k: job["report"][k] for k in REPORT_FIELDS} == {k: report[k] for k in REPORT_FIELDS}
    assert not (ctx.settings.data_dir / layout.parts_prefix(job_id)).exists()


def test_parts_are_merged_in_order_as_they_finish_in_any_order(
    direct: tuple[JobContext, dict[str, list[str]]], source: Path, tmp_path: Path
) -> None:
    """Parts finish out of order on two workers; each finish merges the run of finished
    parts that is next in order, so the merge keeps up with the parts and no merge task
    is ever queued. Every other step forgets the duplicate state, as a step in another
    process would, and rebuilds it from the keys files."""
    ctx, sent = direct
    job_id, parts = split_job(ctx, source, sent)
    order = [1, 2, 0, *range(len(parts) - 1, 2, -1)]  # then the rest, last first
    done: set[int] = set()
    for step, index in enumerate(order):
        if step % 2:
            merge._states.clear()
        assert run_part(worker(ctx, 1 + step % 2), parts[index]) is Outcome.DONE
        done.add(index)
        prefix = next(i for i in range(len(parts) + 1) if i not in done)
        if prefix < len(parts):
            assert merged_parts(ctx, job_id) == prefix, (step, index)
            assert ctx.store.get(job_id)["status"] == "running"
    assert sent["merge"] == []
    assert_same_as_one_run(ctx, job_id, source, tmp_path)


class Killed(BaseException):
    """A SIGKILL of the merging process, as far as the merge can tell."""


def test_a_merger_killed_mid_part_is_taken_over(
    direct: tuple[JobContext, dict[str, list[str]]],
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The merger dies while appending the last part (half of it written, its claim
    still held): once its heartbeat is stale the sweep re-sends the merge, which takes
    over from what the job records, rebuilding the duplicate state, and ends the job
    with the same bytes as one run."""
    ctx, sent = direct
    job_id, parts = split_job(ctx, source, sent)
    for index in range(len(parts) - 1):
        run_part(worker(ctx, 1), parts[index])
    assert merged_parts(ctx, job_id) == len(parts) - 1

    append = part_merge.append_part

    def dies_half_way(fd: int, offset: int, rows: Path, runs: object) -> int:
        os.pwrite(fd, rows.read_bytes()[:1000], offset)
        raise Killed

    monkeypatch.setattr(part_merge, "append_part", dies_half_way)
    with pytest.raises(Killed):
        run_part(worker(ctx, 2), parts[-1])
    monkeypatch.setattr(part_merge, "append_part", append)
    merge._states.clear()  # the process died with it
    job = ctx.store.get(job_id)
    assert job["status"] == "running" and job["worker"] == "w:2"
    assert ctx.store.parts.get(part_id(job_id, len(parts) - 1))["status"] == "succeeded"

    # Its heartbeat goes stale (the time a dead merger leaves, set rather than waited).
    ctx.store.jobs.update_one({"_id": job_id}, {"$set": {"merge_ts": time.time() - 60}})
    assert job_id in sweep(ctx).resent and sent["merge"] == [job_id]
    assert run_merge(worker(ctx, 3), job_id) is Outcome.DONE
    assert_same_as_one_run(ctx, job_id, source, tmp_path)


def test_a_part_done_while_another_worker_merges_is_merged_by_that_worker(
    direct: tuple[JobContext, dict[str, list[str]]],
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last part finishes (worker 2) while worker 1 holds the merge, appending the
    part before it: worker 2 does not wait for the claim, and worker 1, once it lets
    go, finds the last part done and merges it, which ends the job."""
    ctx, sent = direct
    job_id, parts = split_job(ctx, source, sent)
    for index in range(len(parts) - 2):
        run_part(worker(ctx, 1), parts[index])
    append = part_merge.append_part
    outcomes: list[Outcome] = []

    def last_part_ends_meanwhile(fd: int, offset: int, rows: Path, runs: object) -> int:
        if not outcomes:
            outcomes.append(run_part(worker(ctx, 2), parts[-1]))
            assert merged_parts(ctx, job_id) == len(parts) - 2  # worker 1 still at it
            assert ctx.store.get(job_id)["worker"] == "w:1"
        return append(fd, offset, rows, runs)  # type: ignore[arg-type]

    monkeypatch.setattr(part_merge, "append_part", last_part_ends_meanwhile)
    assert run_part(worker(ctx, 1), parts[-2]) is Outcome.DONE
    assert outcomes == [Outcome.DONE]  # worker 2's part is done; it left the merge
    assert sent["merge"] == []
    assert_same_as_one_run(ctx, job_id, source, tmp_path)
