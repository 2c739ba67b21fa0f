"""Scrape-time metrics: a broken source never breaks /metrics, and queue depth counts
the Redis lists kombu really uses."""

from __future__ import annotations

from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import CollectorRegistry, generate_latest

from src.api.monitoring import queue_keys
from src.core.instruments import StateCollector
from src.jobs.model import JobStatus

STATUSES = [s.value for s in JobStatus]


def _scrape(collector: StateCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def _down() -> int:
    raise ConnectionError("refused")


def test_state_is_read_at_scrape_time() -> None:
    reads: list[str] = []

    def depth() -> int:
        reads.append("depth")
        return 3

    collector = StateCollector(
        "cleaning",
        depth,
        lambda: {"queued": 3, "succeeded": 5},
        lambda: 100.0,
        statuses=STATUSES,
        clock=lambda: 130.0,
    )
    registry = CollectorRegistry()
    registry.register(collector)
    assert reads == []  # registering reads nothing
    text = generate_latest(registry).decode()
    assert reads == ["depth"]
    assert 'cleaning_queue_depth{queue="cleaning"} 3.0' in text
    assert 'cleaning_jobs{status="queued"} 3.0' in text
    assert 'cleaning_jobs{status="failed"} 0.0' in text  # every status, 0 when absent
    assert "cleaning_oldest_queued_job_age_seconds 30.0" in text
    assert 'cleaning_state_up{source="broker"} 1.0' in text


def test_a_source_down_is_reported_not_raised() -> None:
    text = _scrape(StateCollector("cleaning", _down, lambda: {}, lambda: None, statuses=STATUSES))
    assert 'cleaning_state_up{source="broker"} 0.0' in text
    assert 'cleaning_state_up{source="store"} 1.0' in text
    assert "cleaning_queue_depth{" not in text
    assert "cleaning_oldest_queued_job_age_seconds 0.0" in text

    text = _scrape(StateCollector("cleaning", lambda: 0, _down, lambda: None, statuses=STATUSES))
    assert 'cleaning_state_up{source="store"} 0.0' in text
    assert "cleaning_jobs{" not in text


def test_queue_keys_are_kombus() -> None:
    channel = Channel.__new__(Channel)  # only the naming helpers, no connection
    channel.priority_steps = PRIORITY_STEPS
    assert queue_keys("cleaning") == [channel._q_for_pri("cleaning", p) for p in PRIORITY_STEPS]
