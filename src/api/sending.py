"""The tasks of accepted jobs, sent to the broker in batches from one thread.

Celery's `send_task` blocks (kombu, redis-py), so each submission used to hop to a
thread of its own and back, which cost the API more than the send itself. Here a
submission adds its job id to the next batch and awaits its own outcome: one thread
hop for every request that came meanwhile, each still answered only once its task is
on the broker (or refused with the send's error, so the submission rolls back as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio.to_thread

from src.core import broker

log = logging.getLogger(__name__)

MAX_BATCH = 64  # a batch waits for the previous one: keep each short


def _send_clean(job_id: str) -> None:
    broker.send_clean(job_id)  # looked up at each call: tests replace it


def send_all(
    job_ids: list[str], send: Callable[[str], None] = _send_clean
) -> list[Exception | None]:
    """Send each (blocking); the error of each that failed. After a first failure the
    rest fail with it, without trying: each try waits out the broker's retry policy, and
    a broker down for one is down for the batch."""
    outcomes: list[Exception | None] = []
    failed: Exception | None = None
    for job_id in job_ids:
        if failed is None:
            try:
                send(job_id)
            except Exception as exc:  # kombu raises several kinds when Redis is down
                failed = exc
        outcomes.append(failed)
    return outcomes


class TaskSender:
    """`await sender(job_id)`: the job's `clean` task is on the broker, or this raises."""

    def __init__(self, send: Callable[[str], None] = _send_clean) -> None:
        self._send = send
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, job_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job_id, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="task-sender")
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            ids = [job_id for job_id, _ in batch]
            try:
                outcomes = await anyio.to_thread.run_sync(send_all, ids, self._send)
            except BaseException as exc:  # cancelled (shutdown): nobody waits forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(RuntimeError(f"task not sent: {exc!r}"))
                raise
            for (_, future), error in zip(batch, outcomes, strict=True):
                if future.done():  # its request was cancelled meanwhile
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
