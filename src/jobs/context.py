"""What a worker needs to run a step of a job, and the one way every step runs.

A step is a whole job, one part of a split job, or a split job's merge. Each is
claimed by compare-and-set, runs under a heartbeat, and ends with a terminal
status whatever its body raised: `JobContext.attempt` is that ladder, written once.

Each claimed run may last JOB_TIME_LIMIT_SECONDS (its `deadline_ts`): it stops itself
between chunks past it, Celery's soft time limit a little later stops one stuck inside
a chunk, and the hard limit after that kills its pool process (Celery starts another).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from pymongo.errors import PyMongoError

from src.core.config import Settings
from src.core.storage import Storage, StorageUnavailable
from src.data.io import InputError
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc
from src.jobs.store import JobStore, Records

log = logging.getLogger(__name__)

T = TypeVar("T")


class Outcome(StrEnum):
    DONE = "done"  # this call brought the job (or part) to a terminal status
    BUSY = "busy"  # another live worker runs it: try again later
    GONE = "gone"  # nothing to do: unknown, already finished, or claimed away


class JobCancelled(Exception):
    """Raised between chunks when a cancel was asked."""


class ClaimLost(Exception):
    """Raised between chunks when the record is no longer ours (requeued by the sweep)."""


class JobStopped(Exception):
    """Raised in a part when its job ended meanwhile (failed, cancelled or expired)."""


class TimeLimitExceeded(Exception):
    """Raised between chunks when the run is past its deadline."""


# The body's exceptions that end the step as they are, before any readable error.
STOPS = (JobCancelled, ClaimLost, JobStopped)
# Bad input or a missing file: the user's to fix, said as it is (no "internal error").
READABLE = (InputError, FileNotFoundError)
# An end: the final status and its error, or None when the claim was lost.
End = Callable[[JobStatus | None, str], Outcome]


def time_limits(limit: float) -> tuple[float, float]:
    """Celery's (soft, hard) time limits of a task whose run may last `limit` seconds.

    Later than the deadline, so a run that reports progress stops itself cleanly between
    chunks: the soft limit is for a run stuck inside one; the hard one, for a run deaf to
    the soft one (native code), kills the pool process.
    """
    grace = min(max(limit / 10, 1.0), 60.0)
    return limit + grace, limit + 2 * grace


def time_limit_error(limit: float, where: str = "") -> str:
    """The error of a run stopped at its deadline; `where` names a part or the merge."""
    what = f" {where}: it" if where else ": the job"
    return f"time limit exceeded{what} ran longer than JOB_TIME_LIMIT_SECONDS ({limit:g} s)"


class JobEvents:
    """What happened to a job, for whoever watches (the worker records metrics from it,
    and tells the API which job changed: every change of a job's record is one of these).

    The default does nothing; `src.jobs` knows no metrics library, nor Redis.
    """

    def claimed(self, doc: JobDoc) -> None:
        """This worker claimed the job (`doc` as stored after the claim)."""

    def progressed(self, record_id: str, rows_done: int, bytes_done: int) -> None:
        """A chunk was cleaned; totals so far for this attempt of a job or part."""

    def finished(self, doc: JobDoc) -> None:
        """This worker brought the job to a final status (`doc` as stored after it)."""

    def tracked(self, job_id: str, status: str) -> None:
        """An attempt to log the job to MLflow ended: logged, retrying or failed."""

    def changed(self, job_id: str) -> None:
        """The job's record changed otherwise: split, a part's rows added, requeued, expired."""


@dataclass(frozen=True)
class Senders:
    """How tasks are queued (the worker passes the broker's); ids only, as always."""

    clean: Callable[[str], None]
    part: Callable[[str], None]
    merge: Callable[[str], None]
    track: Callable[[str], None] | None = None  # log a finished job to MLflow


class Heartbeat:
    """Tells the store this worker is alive, from a thread, even during a long chunk.

    Not after `until` (the hard time limit): a run stuck past it looks lost, so it
    fails as timed out even where nothing killed it.
    """

    def __init__(
        self,
        records: Records[Any],
        record_id: str,
        worker: str,
        every: float,
        field: str,
        until: float | None = None,
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(records, record_id, worker, every, field, until), daemon=True
        )

    def _run(
        self,
        records: Records[Any],
        record_id: str,
        worker: str,
        every: float,
        field: str,
        until: float | None,
    ) -> None:
        while not self._stop.wait(every):
            if until is not None and time.time() > until:
                log.error("%s: past its time limit; heartbeat stopped", record_id)
                return
            try:
                if not records.heartbeat(record_id, worker, field):
                    return
            except PyMongoError as exc:  # the store may come back; keep trying
                log.warning("heartbeat for %s failed: %s", record_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class JobContext:
    """The collaborators of every step, passed as one object.

    `senders` None: jobs always run whole (nothing can queue their parts).
    """

    store: JobStore
    settings: Settings
    files: Storage
    worker: str
    senders: Senders | None = None
    events: JobEvents = field(default_factory=JobEvents)
    # What else means "past the deadline" inside a chunk: the worker passes its task
    # runner's soft-limit exception (Celery's), which `src.jobs` does not import.
    interruptions: tuple[type[Exception], ...] = ()

    def stale_before(self) -> float:
        """A running record whose heartbeat is older than this lost its worker."""
        return time.time() - self.settings.stale_after_seconds

    @property
    def time_limit(self) -> float:
        """How long one claimed run may last (JOB_TIME_LIMIT_SECONDS)."""
        return self.settings.job_time_limit_seconds

    def heartbeat(
        self,
        records: Records[Any],
        record_id: str,
        field: str = "heartbeat_ts",
        deadline: float | None = None,
    ) -> Heartbeat:
        """Beats until the block ends, or until the hard time limit past `deadline`."""
        until = None
        if deadline is not None:
            until = deadline + time_limits(self.time_limit)[1] - self.time_limit
        return Heartbeat(
            records, record_id, self.worker, self.settings.heartbeat_seconds, field, until
        )

    def check_time(self, deadline: float | None) -> None:
        """Between chunks: raise TimeLimitExceeded once the run is past `deadline`."""
        if deadline is not None and time.time() > deadline:
            raise TimeLimitExceeded

    def finished(self, doc: JobDoc | None) -> None:
        """Report a final status this worker set (None: the compare-and-set missed)."""
        if doc is not None:
            notify(self.events.finished, doc)

    def attempt(
        self,
        body: Callable[[], T],
        end: End,
        *,
        where: str = "",
        readable: tuple[type[Exception], ...] = READABLE,
    ) -> T | Outcome:
        """Run `body`; whatever it raises becomes an end, never a crashed worker.

        `where` names the step in errors ("in part 3/19"). A store outage is re-raised:
        the task retries it with backoff.
        """
        time_up: tuple[type[Exception], ...] = (TimeLimitExceeded, *self.interruptions)
        try:
            return body()
        except JobCancelled:
            return end(JobStatus.CANCELLED, "cancelled by request")
        except (ClaimLost, JobStopped):
            return end(None, "job ended")
        except time_up:
            return end(JobStatus.FAILED, time_limit_error(self.time_limit, where))
        except readable as exc:
            return end(JobStatus.FAILED, f"{exc} ({where})" if where else str(exc))
        except (PyMongoError, StorageUnavailable):  # outages: the task retries with backoff
            raise
        except Exception as exc:  # a readable error on the job; the worker lives on
            log.exception("unexpected error %s", where or "in a job")
            where = f" {where}" if where else ""
            return end(JobStatus.FAILED, f"internal error{where}: {type(exc).__name__}: {exc}")


def notify(handler: Callable[..., None], *args: Any) -> None:
    """Call an observer; its failure never changes what happens to the job."""
    try:
        handler(*args)
    except Exception:
        log.exception("job event handler %s failed", getattr(handler, "__name__", handler))
