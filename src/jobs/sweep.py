"""The sweep (run by Celery beat): requeue what lost its worker, resend tasks that may
be lost, expire old jobs. Every change is a compare-and-set, so two sweeps are harmless.

What went silent past its deadline (JOB_TIME_LIMIT_SECONDS) is never requeued: its task
is sent again, whose claim fails it, as for a merge that went silent past its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from src.jobs import layout, rules
from src.jobs.context import JobContext, notify
from src.jobs.records import job_of_part

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)  # sent to be failed, never requeued
    expired: list[str] = field(default_factory=list)
    tracked: list[str] = field(default_factory=list)  # MLflow logging sent (again)


def sweep(ctx: JobContext) -> SweepResult:
    """One pass over jobs and parts; returns the ids it acted on."""
    store, senders = ctx.store, ctx.senders
    if senders is None:
        raise ValueError("the sweep queues tasks: the context needs senders")
    now = time.time()
    stale_before = now - ctx.settings.stale_after_seconds
    sent_before = now - ctx.settings.requeue_queued_after_seconds
    result = SweepResult()
    for records, send in ((store, senders.clean), (store.parts, senders.part)):
        for record_id in records.ids(rules.stale_running(stale_before)):
            if records.requeue(record_id, stale_before):
                notify(ctx.events.changed, job_of_part(record_id))
                send(record_id)
                result.requeued.append(record_id)
            elif records.resend_timed_out(record_id, stale_before):
                send(record_id)  # its claim fails it; the task path delivers its callback
                result.timed_out.append(record_id)
        for record_id in records.ids(rules.old_queued(sent_before)):
            if records.mark_resent(record_id, sent_before):
                send(record_id)
                result.resent.append(record_id)
    for job_id in store.ids(rules.stale_merge(stale_before)):
        senders.merge(job_id)  # its merger died; the merge claim lets one take over
        result.resent.append(job_id)
    if senders.track is not None and ctx.settings.mlflow_tracking_uri:
        for job_id in store.ids(rules.tracking_due(now)):
            again = now + ctx.settings.requeue_queued_after_seconds
            if store.update_where(
                {**rules.tracking_due(now), "_id": job_id}, mlflow_retry_ts=again
            ):
                senders.track(job_id)
                result.tracked.append(job_id)
    for job_id in store.ids(rules.expired(now)):
        layout.remove_job(ctx.files, job_id)
        store.delete_parts(job_id)
        store.delete(job_id)
        notify(ctx.events.changed, job_id)
        result.expired.append(job_id)
    if any(vars(result).values()):
        log.info("sweep: %s", result)
    return result
