"""The API's view of the jobs collection: PyMongo's `AsyncMongoClient` (Motor is
end-of-life). Filters come from `rules`, like the worker's `JobStore`'s."""

from __future__ import annotations

import time
from typing import Any, cast

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from src.core.config import Settings
from src.jobs import rules
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc
from src.jobs.store import (
    AFTER,
    COLLECTION,
    INDEXES,
    NEWEST_FIRST,
    PART_INDEXES,
    PARTS_COLLECTION,
    client_kwargs,
)


class AsyncJobStore:
    """The API's view of the jobs collection."""

    def __init__(self, settings: Settings) -> None:
        # A few connections kept open: concurrent first requests need not each pay a handshake.
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url, minPoolSize=4, **client_kwargs(settings)
        )
        self.jobs = cast(AsyncCollection[JobDoc], self.client[settings.mongo_db][COLLECTION])
        self.tracking = bool(settings.mlflow_tracking_uri)  # see JobStore.finish

    async def close(self) -> None:
        await self.client.close()

    async def ensure_indexes(self) -> None:
        for keys, options in INDEXES:
            await self.jobs.create_index(keys, **options)
        parts = self.jobs.database[PARTS_COLLECTION]
        for keys, options in PART_INDEXES:
            await parts.create_index(keys, **options)

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def insert(self, doc: JobDoc) -> None:
        await self.jobs.insert_one(doc)

    async def get(self, job_id: str) -> JobDoc | None:
        return await self.jobs.find_one({"_id": job_id})

    async def get_by_idempotency_key(self, key: str) -> JobDoc | None:
        return await self.jobs.find_one({"idempotency_key": key})

    async def delete(self, job_id: str) -> None:
        await self.jobs.delete_one({"_id": job_id})

    async def delete_job(self, job_id: str) -> None:
        """A job's record and its parts' (a failed or cancelled split job keeps them)."""
        await self.jobs.database[PARTS_COLLECTION].delete_many({"job_id": job_id})
        await self.jobs.delete_one({"_id": job_id})

    async def get_many(self, job_ids: list[str]) -> list[JobDoc]:
        """Several jobs in one round trip (those that exist)."""
        return await self.jobs.find({"_id": {"$in": job_ids}}).to_list(length=len(job_ids))

    async def list(
        self, status: JobStatus | None, limit: int, before_id: str | None, owner: str | None = None
    ) -> list[JobDoc]:
        """Newest first; only the jobs of `owner` (a key's digest) when one is given."""
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner_hash"] = owner
        if status is not None:
            query["status"] = status
        if before_id is not None:
            query["_id"] = {"$lt": before_id}
        cursor = self.jobs.find(query).sort(NEWEST_FIRST).limit(limit)
        return await cursor.to_list(length=limit)

    async def cancel(self, job_id: str) -> JobDoc | None:
        """Cancel a queued job at once, or ask a running one to stop; None if neither."""
        now = time.time()
        tracked = rules.tracking_fields() if self.tracking else {}
        doc = await self.jobs.find_one_and_update(
            rules.cancel_queued(job_id),
            rules.finish_update(JobStatus.CANCELLED, now, error="cancelled by request", **tracked),
            return_document=AFTER,
        )
        if doc is None:
            doc = await self.jobs.find_one_and_update(
                rules.cancel_running(job_id),
                {"$set": {"cancel_requested": True}},
                return_document=AFTER,
            )
        return doc
