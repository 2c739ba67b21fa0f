"""Submitting a job: save the input, record the job, queue its id — with no orphans.

Order of writes: (1) input file, (2) job document `queued`, (3) task on the
broker. If (2) fails, the file is removed: no job, no task. If (3) fails, the
document and the file are removed before the refusal: never a `queued` job
without a task, and a task is only ever sent for a job that exists. Should that
rollback itself fail, the sweep re-sends tasks of old queued jobs.

Refusals are domain errors (`SubmitError`); the API maps each to an HTTP status.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError, PyMongoError

from src.core.config import Settings
from src.core.storage import Storage, StorageUnavailable
from src.data.formats import INPUT_SUFFIXES, OutputFormat
from src.data.options import CleaningOptions
from src.jobs import destinations, layout
from src.jobs.async_store import AsyncJobStore
from src.jobs.model import Job
from src.jobs.records import JobDoc, new_job_doc

log = logging.getLogger(__name__)


class SubmitError(Exception):
    """A refused submission; nothing of it was kept. `errors`: pydantic's, per field."""

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors


class InvalidOptions(SubmitError):
    """The cleaning options do not validate."""


class UnsupportedFile(SubmitError):
    """Not a CSV, Parquet or JSON Lines file, by its name."""


class UploadTooLarge(SubmitError):
    """The upload is above MAX_UPLOAD_MB."""


class BadSource(SubmitError):
    """A `source` path that may not be read (absolute, '..', out through a link)."""


class SourceNotFound(SubmitError):
    """No file at `source`."""


class IdempotencyConflict(SubmitError):
    """The Idempotency-Key was used before with a different request."""


class Unavailable(SubmitError):
    """The store, the broker or the object store is down: nothing was created; retry later."""


OBJECT_STORE_DOWN = "object store unavailable: job not created; retry later"


class InvalidCallback(SubmitError):
    """The callback_url's host does not resolve, or resolves to a non-public address."""


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """'options.min_length: Input should be greater than or equal to 0'."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def parse_options(raw: str | None) -> CleaningOptions:
    if not raw:
        return CleaningOptions()
    try:
        return CleaningOptions.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", "options", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise InvalidOptions(
            f"invalid options: {describe_validation(exc.errors())}", errors
        ) from None


def upload_suffix(filename: str | None) -> str:
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise UnsupportedFile(
            f"unsupported file type {suffix or '(none)'!r}: send a .csv, .parquet or .jsonl file"
        )
    return INPUT_SUFFIXES[suffix]


def find_source(files: Storage, source: str) -> str:
    """The storage key of a user-named source. Blocking."""
    try:
        return layout.resolve_source(files, source)
    except layout.SourceError as exc:
        raise BadSource(str(exc)) from None
    except FileNotFoundError as exc:
        raise SourceNotFound(str(exc)) from None
    except StorageUnavailable as exc:
        log.warning("submit: %s", exc)
        raise Unavailable(OBJECT_STORE_DOWN) from None


def check_callback(url: str | None, allow_private: bool) -> None:
    """Refuse a callback_url the workers would refuse (`src.jobs.destinations`), before
    anything is stored. Blocking (DNS)."""
    if not url:
        return
    try:
        destinations.vet(url, allow_private)
    except destinations.Refused as exc:
        error = {"loc": ["body", "callback_url"], "msg": str(exc), "type": "callback_destination"}
        raise InvalidCallback(f"callback_url: {exc}", [error]) from None


@dataclass(frozen=True)
class Submission:
    """A request to clean one input, once its file is stored."""

    job_id: str
    input_relpath: str
    input_name: str
    owns_input: bool
    options: CleaningOptions
    output_format: OutputFormat
    callback_url: str | None
    content_digest: str  # sha256 of an upload, or "source:<key>"
    owner: str | None = None  # the API key's name
    owner_hash: str | None = None  # the API key's sha256: whose job it is

    def scoped(self, idempotency_key: str) -> str:
        """Idempotency keys are per owner: two teams may choose the same one."""
        return f"{self.owner_hash or '-'}:{idempotency_key}"

    def request_hash(self) -> str:
        """What makes two requests with one Idempotency-Key the same request."""
        canonical = json.dumps(
            [
                self.content_digest,
                self.options.model_dump(mode="json"),
                self.output_format,
                self.callback_url,
            ],
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def upload_sha256(self) -> str | None:
        """The uploaded file's sha256 (None for a `source`): kept on the job, so that
        MLflow's lineage need not read the input again to hash it."""
        return None if self.content_digest.startswith("source:") else self.content_digest


async def _replay(store: AsyncJobStore, key: str, digest: str) -> JobDoc | None:
    """The job an earlier request with this Idempotency-Key created, if any."""
    existing = await store.get_by_idempotency_key(key)
    if existing is None:
        return None
    if existing.get("request_hash") != digest:
        raise IdempotencyConflict("Idempotency-Key already used with a different request")
    return existing


async def submit(
    store: AsyncJobStore,
    settings: Settings,
    files: Storage,
    send_clean: Callable[[str], Awaitable[None]],
    sub: Submission,
    idempotency_key: str | None = None,
    inserted: Callable[[JobDoc], None] | None = None,
) -> tuple[Job, bool]:
    """Record and queue the job; (job, created). Removes the job's files on any refusal.

    `send_clean` returns once the task is on the broker (the API's `TaskSender`);
    `inserted` is told the new job's document once stored, before its task is sent.
    """
    job_id, digest = sub.job_id, sub.request_hash()
    scoped = sub.scoped(idempotency_key) if idempotency_key else None
    try:
        if scoped and (existing := await _replay(store, scoped, digest)):
            layout.remove_job(files, job_id)
            return Job.from_doc(existing), False
        doc = new_job_doc(
            job_id=job_id,
            input_relpath=sub.input_relpath,
            input_name=sub.input_name,
            owns_input=sub.owns_input,
            options=sub.options.model_dump(mode="json"),
            output_format=sub.output_format,
            retention_hours=settings.job_retention_hours,
            idempotency_key=scoped,
            request_hash=digest if scoped else None,
            callback_url=sub.callback_url,
            owner=sub.owner,
            owner_hash=sub.owner_hash,
            input_sha256=sub.upload_sha256,
        )
        try:
            await store.insert(doc)
        except DuplicateKeyError:  # a concurrent twin won the race
            layout.remove_job(files, job_id)
            existing = await _replay(store, scoped or "", digest)
            if existing is None:
                raise
            return Job.from_doc(existing), False
    except PyMongoError as exc:
        layout.remove_job(files, job_id)
        log.warning("submit: store unavailable: %s", exc)
        raise Unavailable("job store (MongoDB) unavailable: job not created; retry later") from None
    except BaseException:  # refused, or anything unexpected: no job, so no file either
        layout.remove_job(files, job_id)
        raise
    if inserted is not None:
        inserted(doc)

    try:
        await send_clean(job_id)
    except Exception as exc:  # kombu raises several kinds when Redis is down
        log.warning("submit: broker unavailable, rolling back job %s: %s", job_id, exc)
        try:
            await store.delete(job_id)
        except PyMongoError:
            log.error("submit: rollback of job %s failed; the sweep will resend it", job_id)
        else:
            layout.remove_job(files, job_id)
        raise Unavailable("broker (Redis) unavailable: job not created; retry later") from None
    return Job.from_doc(doc), True
