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
LIMIT = 600.0  # JOB_TIME_LIMIT_SECONDS
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


def matches_any(alternatives: list[dict[str, Any]], doc: dict[str, Any]) -> bool:
    """Filters tried in turn (rules.py has no `$or`): the first that matches wins."""
    return any(matches(query, doc) for query in alternatives)


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
# Deadlines (claimed at + JOB_TIME_LIMIT_SECONDS) either side of now; none: claimed before
# time limits existed, which counts as no limit.
AHEAD, PAST = NOW + 60, NOW - 1
DEAD_IN_TIME = {**DEAD_RUN, "deadline_ts": AHEAD}  # its worker died before the deadline
DEAD_LATE = {**DEAD_RUN, "deadline_ts": PAST}  # silent past it (the hard limit killed it)
LIVE_LATE = {**LIVE_RUN, "deadline_ts": PAST}  # its worker is still stopping it
MERGE_DEAD_IN_TIME = {**MERGE_DEAD, "merge_deadline_ts": AHEAD}
MERGE_DEAD_LATE = {**MERGE_DEAD, "merge_deadline_ts": PAST}
MERGE_LIVE_LATE = {**MERGE_LIVE, "merge_deadline_ts": PAST}

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
    "timed_out": (
        rules.timed_out(ID, STALE_BEFORE, NOW),
        [DEAD_LATE, {**DEAD_LATE, "attempts": CAP}],
        [DEAD_IN_TIME, DEAD_RUN, LIVE_LATE, {**DEAD_LATE, "status": "failed"}, DONE],
    ),
    "resend_timed_out": (
        rules.resend_timed_out(ID, STALE_BEFORE, NOW),
        [DEAD_LATE],
        [{**DEAD_LATE, "sent_ts": FRESH}, DEAD_IN_TIME],  # sent in the last stale period
    ),
    "merge_timed_out": (
        rules.merge_timed_out(ID, STALE_BEFORE, NOW),
        [MERGE_DEAD_LATE],
        [MERGE_DEAD_IN_TIME, MERGE_DEAD, MERGE_LIVE_LATE, {**MERGE_DEAD_LATE, "_id": "job2"}],
    ),
}
# Filters tried in turn: name: (alternatives, the documents one matches, those none does)
ALTERNATIVES = {
    "claim_stale_before_deadline": (
        rules.before_deadline(rules.claim_stale(ID, STALE_BEFORE, CAP), NOW),
        [DEAD_IN_TIME, DEAD_RUN],
        [DEAD_LATE, {**DEAD_IN_TIME, "attempts": CAP}, LIVE_RUN, QUEUED, DONE],
    ),
    "merge_free_before_deadline": (
        rules.before_deadline(rules.merge_free(ID, STALE_BEFORE), NOW, "merge_deadline_ts"),
        [MERGE_NONE, MERGE_DEAD_IN_TIME, MERGE_DEAD],
        [MERGE_DEAD_LATE, MERGE_LIVE, {**MERGE_DEAD_IN_TIME, "status": "cancelled"}],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_filter_matches_exactly_its_documents(name: str) -> None:
    query, hits, misses = CASES[name]
    assert [matches(query, d) for d in hits] == [True] * len(hits)
    assert [matches(query, d) for d in misses] == [False] * len(misses)


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_alternatives_match_exactly_their_documents(name: str) -> None:
    alternatives, hits, misses = ALTERNATIVES[name]
    assert [matches_any(alternatives, d) for d in hits] == [True] * len(hits)
    assert [matches_any(alternatives, d) for d in misses] == [False] * len(misses)


def test_claim_then_lose_then_requeue_then_exhaust() -> None:
    """A job's life through the updates: each leaves it where the next filter expects."""
    doc = job(sent_ts=DEAD)
    doc = apply(rules.claim_update(NOW, "w:1", LIMIT), doc)
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
        doc = apply(
            rules.requeue_update(later), apply(rules.claim_update(later, "w:2", LIMIT), doc)
        )
        assert doc["attempts"] == attempt
    assert not matches(rules.claim_queued(ID, CAP), doc)
    assert matches(rules.exhausted_queued(ID, CAP), doc)


@pytest.mark.parametrize(
    "status", [s for s in JobStatus if s not in (JobStatus.QUEUED, JobStatus.RUNNING)]
)
def test_finish_leaves_no_transition(status: JobStatus) -> None:
    doc = apply(rules.claim_update(NOW, "w:1", LIMIT), job())
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
        apply(rules.claim_update(NOW, "w:1", LIMIT), job()),
    )
    assert doc["parts_total"] == 4 and doc["parts_done"] == 0 and doc["bytes_total"] == 400
    assert doc["rows_done"] == doc["bytes_done"] == 0
    far_future = NOW + 100 * 365 * 86_400
    assert not matches(rules.stale_running(far_future), doc)
    assert not matches(rules.claim_stale(ID, far_future), doc)
    assert matches(rules.merge_free(ID, STALE_BEFORE), doc)  # nobody merges it yet
    assert not matches(rules.stale_merge(far_future), doc)  # and no merger died

    merging = apply(rules.merge_claim_update(NOW, "w:2", LIMIT), doc)
    assert merging["worker"] == "w:2" and merging["merge_started_ts"] == NOW
    assert not matches(rules.merge_free(ID, STALE_BEFORE), merging)  # a second merge misses
    assert matches(rules.owned(ID, "w:2"), merging)
    silent = NOW + 60  # the merger stopped beating
    assert matches(rules.stale_merge(silent - 30), merging)
    assert matches(rules.merge_free(ID, silent - 30), merging)


def test_a_run_past_its_deadline_is_never_run_again() -> None:
    """Each claim gives its run JOB_TIME_LIMIT_SECONDS. Lost before the deadline, the
    record may run again; silent past it, it can only fail."""
    doc = apply(rules.claim_update(NOW, "w:1", LIMIT), job(sent_ts=DEAD))
    assert doc["deadline_ts"] == NOW + LIMIT
    seen = NOW + 70  # its worker died early (a lost worker, not a time limit), seen now
    stale = rules.claim_stale(ID, seen - 30, CAP)
    assert matches_any(rules.before_deadline(stale, seen), doc)
    assert not matches(rules.timed_out(ID, seen - 30, seen), doc)

    doc = apply(rules.claim_update(seen, "w:2", LIMIT), doc)  # taken over: a new run
    assert doc["deadline_ts"] == seen + LIMIT and doc["attempts"] == 2
    late = doc["deadline_ts"] + 120  # silent past its deadline (the hard limit killed it)
    stale = rules.claim_stale(ID, late - 30, CAP)
    assert not matches_any(rules.before_deadline(stale, late), doc)  # never claimed again
    assert not matches_any(rules.before_deadline(rules.claim_stale(ID, late - 30), late), doc)
    assert matches(rules.timed_out(ID, late - 30, late), doc)
    assert matches(rules.resend_timed_out(ID, late - 30, late), doc)  # its task fails it
    resent = apply({"$set": {"sent_ts": late}}, doc)
    assert not matches(rules.resend_timed_out(ID, late - 30, late + 1), resent)  # once a period

    failed = apply(rules.finish_update(JobStatus.FAILED, late, error="time limit"), doc)
    assert not matches(rules.timed_out(ID, late - 30, late), failed)
    assert not matches(rules.stale_running(late - 30), failed)


def test_a_split_job_has_no_deadline_of_its_own_but_its_merge_has() -> None:
    """A split job lives as long as its parts and its merge, each with its own limit."""
    doc = apply(
        rules.split_update(parts_total=2, bytes_total=20),
        apply(rules.claim_update(NOW, "w:1", LIMIT), job()),
    )
    far_future = NOW + 100 * 365 * 86_400
    assert not matches(rules.timed_out(ID, far_future, far_future), doc)
    assert doc["deadline_ts"] > far_future

    merging = apply(rules.merge_claim_update(NOW, "w:2", LIMIT), doc)
    assert merging["merge_deadline_ts"] == NOW + LIMIT
    died = NOW + 60  # the merger dies before its deadline: another may merge
    free = rules.merge_free(ID, died - 30)
    assert matches_any(rules.before_deadline(free, died, "merge_deadline_ts"), merging)
    assert not matches(rules.merge_timed_out(ID, died - 30, died), merging)
    late = NOW + LIMIT + 120  # silent past it: never merged again, the job fails
    free = rules.merge_free(ID, late - 30)
    assert not matches_any(rules.before_deadline(free, late, "merge_deadline_ts"), merging)
    assert matches(rules.merge_timed_out(ID, late - 30, late), merging)
