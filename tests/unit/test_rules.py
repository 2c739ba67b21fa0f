"""The job state machine (`src.jobs.rules`): which documents each filter lets a transition touch.

Dict equality would only restate the code, so each filter runs through a tiny
matcher of the MongoDB operators rules.py uses (equality, `$lt`, `$gt`, `$gte`) and
each update through `$set`/`$inc`; anything else fails loudly, so a new operator
(one the wire-protocol test store might mishandle) shows up here first.
"""

from __future__ import annotations

from typing import Any

import pytest

from src.jobs import rules
from src.jobs.model import JobStatus

NOW = 1_000.0
STALE_BEFORE = NOW - 30  # the sweep's cut-off: heartbeats older than this are dead
CAP = 3
ID = "job1"
COMPARE = {"$lt": lambda a, b: a < b, "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b}


def matches(query: dict[str, Any], doc: dict[str, Any]) -> bool:
    """MongoDB's answer, for the operators rules.py uses (a missing field compares false)."""
    for name, want in query.items():
        if isinstance(want, dict):
            unknown = set(want) - set(COMPARE)
            assert not unknown, f"operator not modelled here: {unknown}"
            if name not in doc or not all(COMPARE[op](doc[name], v) for op, v in want.items()):
                return False
        elif doc.get(name) != want:
            return False
    return True


def apply(update: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    assert set(update) <= {"$set", "$inc"}, f"operator not modelled here: {set(update)}"
    out = {**doc, **update.get("$set", {})}
    for name, step in update.get("$inc", {}).items():
        out[name] = out.get(name, 0) + step
    return out


def job(status: str = "queued", **fields: Any) -> dict[str, Any]:
    return {"_id": ID, "status": status, "attempts": 0, **fields}


FRESH, DEAD = NOW - 1, NOW - 60  # heartbeat / sent times either side of the cut-off
QUEUED = job(attempts=CAP - 1, sent_ts=DEAD)  # a last attempt left; its task sent long ago
QUEUED_CAP = job(attempts=CAP)
QUEUED_NEW = job(sent_ts=FRESH)
DEAD_RUN = job("running", attempts=1, worker="w:1", heartbeat_ts=DEAD, sent_ts=DEAD)
DEAD_RUN_CAP = {**DEAD_RUN, "attempts": CAP}
LIVE_RUN = {**DEAD_RUN, "heartbeat_ts": FRESH}
LIVE_RUN_CAP = {**LIVE_RUN, "attempts": CAP}
DONE = job("succeeded", heartbeat_ts=DEAD, expires_ts=NOW - 1)
MERGE_NONE, MERGE_DEAD, MERGE_LIVE = (job("running", merge_ts=t) for t in (0.0, DEAD, FRESH))

CASES = {  # name: (filter, the documents it matches, those it does not)
    "claim_queued": (
        rules.claim_queued(ID, CAP),
        [QUEUED, QUEUED_NEW],
        [QUEUED_CAP, DEAD_RUN, DONE, {**QUEUED, "_id": "job2"}],
    ),
    "claim_stale": (
        rules.claim_stale(ID, STALE_BEFORE),
        [DEAD_RUN, DEAD_RUN_CAP],
        [LIVE_RUN, {**QUEUED, "heartbeat_ts": DEAD}, DONE],
    ),
    "claim_stale_cap": (rules.claim_stale(ID, STALE_BEFORE, CAP), [DEAD_RUN], [DEAD_RUN_CAP]),
    "exhausted_queued": (rules.exhausted_queued(ID, CAP), [QUEUED_CAP], [QUEUED, DEAD_RUN_CAP]),
    "exhausted_stale": (
        rules.exhausted_stale(ID, CAP, STALE_BEFORE),
        [DEAD_RUN_CAP],
        [DEAD_RUN, LIVE_RUN_CAP, QUEUED_CAP],
    ),
    "owned": (rules.owned(ID, "w:1"), [DEAD_RUN, LIVE_RUN], [{**LIVE_RUN, "worker": "w:2"}, DONE]),
    "running": (rules.running(ID), [DEAD_RUN, LIVE_RUN], [QUEUED, DONE]),
    "cancel_queued": (rules.cancel_queued(ID), [QUEUED, QUEUED_CAP], [LIVE_RUN, DONE]),
    "cancel_running": (rules.cancel_running(ID), [LIVE_RUN, DEAD_RUN], [QUEUED, DONE]),
    "merge_free": (rules.merge_free(ID, STALE_BEFORE), [MERGE_NONE, MERGE_DEAD], [MERGE_LIVE]),
    "stale_merge": (
        rules.stale_merge(STALE_BEFORE),
        [MERGE_DEAD],
        [MERGE_NONE, MERGE_LIVE, {**MERGE_DEAD, "status": "failed"}],
    ),
    "resend": (rules.resend(ID, STALE_BEFORE), [QUEUED], [QUEUED_NEW, DEAD_RUN]),
    "stale_running": (rules.stale_running(STALE_BEFORE), [DEAD_RUN], [LIVE_RUN, DONE]),
    "old_queued": (rules.old_queued(STALE_BEFORE), [QUEUED], [QUEUED_NEW, DEAD_RUN]),
    "expired": (
        rules.expired(NOW),
        [DONE],
        [{**DONE, "expires_ts": NOW + 1}, LIVE_RUN],  # not yet, or never set
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_filter_matches_exactly_its_documents(name: str) -> None:
    query, hits, misses = CASES[name]
    assert [matches(query, d) for d in hits] == [True] * len(hits)
    assert [matches(query, d) for d in misses] == [False] * len(misses)


def test_claim_then_lose_then_requeue_then_exhaust() -> None:
    """A job's life through the updates: each leaves it where the next filter expects."""
    doc = job(sent_ts=DEAD)
    doc = apply(rules.claim_update(NOW, "w:1"), doc)
    assert doc["status"] == "running" and doc["worker"] == "w:1" and doc["attempts"] == 1
    assert doc["heartbeat_ts"] == doc["started_ts"] == NOW
    assert doc["rows_done"] == doc["bytes_done"] == 0
    assert matches(rules.owned(ID, "w:1"), doc) and not matches(rules.owned(ID, "w:2"), doc)
    assert not matches(rules.claim_queued(ID, CAP), doc)  # a second delivery cannot claim it
    assert not matches(rules.claim_stale(ID, STALE_BEFORE), doc)  # its heartbeat is fresh

    doc = apply(rules.progress_update(NOW + 5, 10, 100, 50, 500), doc)
    assert doc["rows_done"] == 10 and doc["rows_total"] == 100
    assert doc["bytes_done"] == 50 and doc["bytes_total"] == 500
    assert doc["heartbeat_ts"] == NOW + 5

    later = NOW + 5 + 60  # the worker went silent for a minute
    assert matches(rules.claim_stale(ID, later - 30, CAP), doc)
    doc = apply(rules.requeue_update(later), doc)
    assert doc["status"] == "queued" and doc["worker"] is None and doc["sent_ts"] == later
    assert not matches(rules.owned(ID, "w:1"), doc)  # the silent worker's updates now miss
    for attempt in range(2, CAP + 1):
        assert matches(rules.claim_queued(ID, CAP), doc)
        doc = apply(rules.requeue_update(later), apply(rules.claim_update(later, "w:2"), doc))
        assert doc["attempts"] == attempt
    assert not matches(rules.claim_queued(ID, CAP), doc)
    assert matches(rules.exhausted_queued(ID, CAP), doc)


@pytest.mark.parametrize(
    "status", [s for s in JobStatus if s not in (JobStatus.QUEUED, JobStatus.RUNNING)]
)
def test_finish_leaves_no_transition(status: JobStatus) -> None:
    doc = apply(rules.claim_update(NOW, "w:1"), job())
    done = apply(rules.finish_update(status, NOW + 1, error="why"), doc)
    assert done["status"] == status.value and done["finished_ts"] == NOW + 1
    assert done["error"] == "why"
    late = NOW + 3_600
    for query in (
        rules.owned(ID, "w:1"),
        rules.claim_queued(ID, CAP),
        rules.claim_stale(ID, late),
        rules.cancel_queued(ID),
        rules.cancel_running(ID),
        rules.stale_running(late),
    ):
        assert not matches(query, done), query


def test_split_job_is_never_stale_and_merges_once() -> None:
    """A split job lives through its parts and its merge, never through its own heartbeat."""
    doc = apply(
        rules.split_update(parts_total=4, bytes_total=400),
        apply(rules.claim_update(NOW, "w:1"), job()),
    )
    assert doc["parts_total"] == 4 and doc["parts_done"] == 0 and doc["bytes_total"] == 400
    assert doc["rows_done"] == doc["bytes_done"] == 0
    far_future = NOW + 100 * 365 * 86_400
    assert not matches(rules.stale_running(far_future), doc)
    assert not matches(rules.claim_stale(ID, far_future), doc)
    assert matches(rules.merge_free(ID, STALE_BEFORE), doc)  # nobody merges it yet
    assert not matches(rules.stale_merge(far_future), doc)  # and no merger died

    merging = apply(rules.merge_claim_update(NOW, "w:2"), doc)
    assert merging["worker"] == "w:2" and merging["merge_started_ts"] == NOW
    assert not matches(rules.merge_free(ID, STALE_BEFORE), merging)  # a second merge misses
    assert matches(rules.owned(ID, "w:2"), merging)
    silent = NOW + 60  # the merger stopped beating
    assert matches(rules.stale_merge(silent - 30), merging)
    assert matches(rules.merge_free(ID, silent - 30), merging)
