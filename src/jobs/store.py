"""The MongoDB job repository: `JobStore` for the worker (`AsyncJobStore`, the API's, is in
`src.jobs.async_store`).

Methods speak the domain; the filters come from `rules`. PyMongo only
(Motor is end-of-life): `AsyncMongoClient` in async code, `MongoClient` in the worker.
"""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar, cast

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection

from src.core.config import Settings
from src.jobs import rules
from src.jobs.model import JobStatus
from src.jobs.records import Claimable, JobDoc, PartDoc

COLLECTION = "jobs"
PARTS_COLLECTION = "job_parts"
# (keys, options): shared by both stores.
INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("status", ASCENDING), ("created_at", DESCENDING)], {"name": "status_created"}),
    ([("idempotency_key", ASCENDING)], {"name": "idempotency", "unique": True, "sparse": True}),
    # One key's jobs (the test store refuses indexes that name `_id` beside other keys).
    ([("owner_hash", ASCENDING)], {"name": "owner"}),
    ([("expires_at", ASCENDING)], {"name": "ttl", "expireAfterSeconds": 0}),
]
PART_INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("job_id", ASCENDING), ("index", ASCENDING)], {"name": "job_index"}),
    ([("status", ASCENDING)], {"name": "status"}),
    ([("expires_at", ASCENDING)], {"name": "ttl", "expireAfterSeconds": 0}),
]
AFTER = ReturnDocument.AFTER
NEWEST_FIRST = [("_id", DESCENDING)]


def client_kwargs(settings: Settings) -> dict[str, Any]:
    timeout = settings.store_timeout_ms
    return {
        "serverSelectionTimeoutMS": timeout,
        "connectTimeoutMS": timeout,
        "socketTimeoutMS": max(timeout * 5, 10_000),
        "tz_aware": True,
    }


Doc = TypeVar("Doc", bound=Claimable)


class Records(Generic[Doc]):
    """Claimable records in one collection: jobs, or the parts of split jobs.

    Both follow the same rules (`rules`): claim by compare-and-set, heartbeat,
    progress, a terminal status, and a cap on redeliveries.
    """

    def __init__(self, collection: Collection[Doc]) -> None:
        self.coll = collection

    def get(self, record_id: str) -> Doc | None:
        return self.coll.find_one({"_id": record_id})

    def claim(
        self, record_id: str, worker: str, stale_before: float, cap: int, time_limit: float
    ) -> Doc | None:
        """queued → running, or take over a running one whose worker died before its
        deadline; attempts < cap. This run may last `time_limit` seconds."""
        now = time.time()
        update = rules.claim_update(now, worker, time_limit)
        stale = rules.claim_stale(record_id, stale_before, cap)
        for expected in (rules.claim_queued(record_id, cap), *rules.before_deadline(stale, now)):
            if doc := self.coll.find_one_and_update(expected, update, return_document=AFTER):
                return doc
        return None

    def heartbeat(self, record_id: str, worker: str, field: str = "heartbeat_ts") -> bool:
        result = self.coll.update_one(
            rules.owned(record_id, worker), {"$set": {field: time.time()}}
        )
        return result.matched_count == 1

    def progress(
        self,
        record_id: str,
        worker: str,
        rows_done: int,
        rows_total: int | None,
        bytes_done: int,
        bytes_total: int,
    ) -> Doc | None:
        """Record progress; the document returned tells whether cancel was asked."""
        return self.coll.find_one_and_update(
            rules.owned(record_id, worker),
            rules.progress_update(time.time(), rows_done, rows_total, bytes_done, bytes_total),
            return_document=AFTER,
        )

    def finish(self, expected: rules.Filter, status: JobStatus, **fields: Any) -> Doc | None:
        """Compare-and-set to a terminal status from the state `expected` describes."""
        return self.coll.find_one_and_update(
            expected, rules.finish_update(status, time.time(), **fields), return_document=AFTER
        )

    def finish_owned(
        self, record_id: str, worker: str, status: JobStatus, **fields: Any
    ) -> Doc | None:
        """End a record this worker holds; None when it no longer does."""
        return self.finish(rules.owned(record_id, worker), status, **fields)

    def fail_exhausted(
        self, record_id: str, cap: int, stale_before: float, reason: str
    ) -> Doc | None:
        """Fail a record whose workers kept dying: queued or silent with no attempt left."""
        for expected in (
            rules.exhausted_queued(record_id, cap),
            rules.exhausted_stale(record_id, cap, stale_before),
        ):
            if done := self.finish(expected, JobStatus.FAILED, error=reason):
                return done
        return None

    def fail_timed_out(self, record_id: str, stale_before: float, reason: str) -> Doc | None:
        """Fail a record whose run went silent past its deadline (it is never run again)."""
        return self.finish(
            rules.timed_out(record_id, stale_before, time.time()), JobStatus.FAILED, error=reason
        )

    def requeue(self, record_id: str, stale_before: float) -> bool:
        """running (worker silent before its deadline) → queued; True when this call made
        the change. A record past its deadline is never requeued."""
        now = time.time()
        for expected in rules.before_deadline(rules.claim_stale(record_id, stale_before), now):
            if self.coll.update_one(expected, rules.requeue_update(now)).modified_count == 1:
                return True
        return False

    def resend_timed_out(self, record_id: str, stale_before: float) -> bool:
        """Mark a timed-out record's task as sent now (at most once a stale period); True
        when this call did, so the caller sends it."""
        now = time.time()
        result = self.coll.update_one(
            rules.resend_timed_out(record_id, stale_before, now), {"$set": {"sent_ts": now}}
        )
        return result.modified_count == 1

    def mark_resent(self, record_id: str, sent_before: float) -> bool:
        result = self.coll.update_one(
            rules.resend(record_id, sent_before), {"$set": {"sent_ts": time.time()}}
        )
        return result.modified_count == 1

    def ids(self, query: dict[str, Any], limit: int = 1000) -> list[str]:
        return [d["_id"] for d in self.coll.find(query, {"_id": 1}).limit(limit)]

    def delete(self, record_id: str) -> None:
        self.coll.delete_one({"_id": record_id})

    def set_fields(self, record_id: str, **fields: Any) -> None:
        """Bookkeeping that is no status change (callback delivery)."""
        self.coll.update_one({"_id": record_id}, {"$set": fields})

    def update_where(self, expected: rules.Filter, **fields: Any) -> Doc | None:
        """`$set` fields if the record is as `expected`; the record after, or None."""
        return self.coll.find_one_and_update(expected, {"$set": fields}, return_document=AFTER)


class JobStore(Records[JobDoc]):
    """The worker's view of the jobs collection and of split jobs' parts (blocking PyMongo).

    `timeout_ms` bounds every operation (PyMongo's client-side timeout); the API's
    metrics collector uses it so that a store outage cannot stall a scrape.
    """

    def __init__(self, settings: Settings, timeout_ms: int | None = None) -> None:
        kwargs = client_kwargs(settings)
        if timeout_ms is not None:
            kwargs.update(serverSelectionTimeoutMS=timeout_ms, timeoutMS=timeout_ms)
        self.client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url, **kwargs)
        db = self.client[settings.mongo_db]
        super().__init__(cast(Collection[JobDoc], db[COLLECTION]))
        self.jobs = self.coll
        self.parts: Records[PartDoc] = Records(cast(Collection[PartDoc], db[PARTS_COLLECTION]))
        self.tracking = bool(settings.mlflow_tracking_uri)

    def finish(self, expected: rules.Filter, status: JobStatus, **fields: Any) -> JobDoc | None:
        """A job's final status; with MLflow tracking on, its run marked as coming, at once."""
        if self.tracking:
            fields = {**rules.tracking_fields(), **fields}
        return super().finish(expected, status, **fields)

    def close(self) -> None:
        self.client.close()

    def ensure_indexes(self) -> None:
        for keys, options in INDEXES:
            self.jobs.create_index(keys, **options)
        for keys, options in PART_INDEXES:
            self.parts.coll.create_index(keys, **options)

    def count_by_status(self) -> dict[str, int]:
        """One count per status: each an index scan (status_created), never a collection scan."""
        return {s.value: self.jobs.count_documents({"status": s}) for s in JobStatus}

    def oldest_created_ts(self, status: JobStatus) -> float | None:
        """Creation time of the oldest job in `status` (ids are time-ordered); None if none."""
        doc = self.jobs.find_one({"status": status}, {"created_ts": 1}, sort=[("_id", ASCENDING)])
        return None if doc is None else doc["created_ts"]

    # ------------------------------------------------------------ split jobs
    def split(self, job_id: str, worker: str, parts: list[PartDoc], size: int) -> bool:
        """Record the parts (queued) and mark the job split; False if the job is no longer ours.

        Idempotent: a planner that died half-way leaves parts a new one finds as they were.
        """
        for part in parts:
            self.parts.coll.update_one({"_id": part["_id"]}, {"$setOnInsert": part}, upsert=True)
        doc = self.jobs.find_one_and_update(
            rules.owned(job_id, worker), rules.split_update(len(parts), size), return_document=AFTER
        )
        return doc is not None

    def job_parts(self, job_id: str) -> list[PartDoc]:
        return list(self.parts.coll.find({"job_id": job_id}).sort([("index", ASCENDING)]))

    def parts_succeeded(self, job_id: str) -> int:
        return self.parts.coll.count_documents({"job_id": job_id, "status": JobStatus.SUCCEEDED})

    def add_split_progress(self, job_id: str, rows: int, size: int, **fields: int) -> JobDoc | None:
        """Add a part's rows and bytes to its running job; None when the job stopped."""
        update: dict[str, Any] = {"$inc": {"rows_done": rows, "bytes_done": size, **fields}}
        return self.jobs.find_one_and_update(rules.running(job_id), update, return_document=AFTER)

    def claim_merge(
        self, job_id: str, worker: str, stale_before: float, time_limit: float
    ) -> JobDoc | None:
        """Claim a split job's merge nobody runs, unless a merge of it ran out of time."""
        now = time.time()
        update = rules.merge_claim_update(now, worker, time_limit)
        free = rules.merge_free(job_id, stale_before)
        for expected in rules.before_deadline(free, now, "merge_deadline_ts"):
            if doc := self.jobs.find_one_and_update(expected, update, return_document=AFTER):
                return doc
        return None

    def delete_parts(self, job_id: str) -> None:
        self.parts.coll.delete_many({"job_id": job_id})
