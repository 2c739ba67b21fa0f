"""The FastAPI app (`src.api.main:app`)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pymongo.errors import PyMongoError

from src.api import monitoring, openapi
from src.api.docs_ui import install_docs
from src.api.errors import BodyGuard, install_error_handlers
from src.api.jobcache import JobCache
from src.api.logcontext import install_log_context
from src.api.routes import health, jobs, problems, submit
from src.core import broker
from src.core.config import Settings, get_settings
from src.core.logging import setup_logging
from src.core.notices import Listener
from src.core.storage import Storage, open_storage
from src.jobs.async_store import AsyncJobStore

log = logging.getLogger(__name__)

DESCRIPTION = """
Clean product datasets (Rakuten-style titles and HTML descriptions) as jobs.

1. `POST /jobs/clean` with a CSV/Parquet upload (or a `source` under DATA_DIR) → 202 and `Location`.
2. Follow `GET /jobs/{id}` (or the SSE stream `GET /jobs/{id}/events`) until `succeeded`.
3. Download `GET /jobs/{id}/result`; the report is in the job JSON.

When `API_KEYS` is set, send `X-API-Key` (all routes except health, readiness, metrics and docs).
"""


async def _ensure_indexes(store: AsyncJobStore) -> None:
    """Create the indexes once the store answers; the API serves (and /ready says 503) meanwhile."""
    while True:
        try:
            await store.ensure_indexes()
            return
        except PyMongoError as exc:
            log.warning("indexes not created yet (store unavailable): %s", exc)
            await asyncio.sleep(2)


async def _prepare(files: Storage) -> None:
    """Create the object store's bucket (when one is configured) once it answers."""
    while True:
        try:
            await asyncio.to_thread(files.prepare)
            return
        except Exception as exc:  # the MinIO client raises several kinds while it starts
            log.warning("storage not ready yet (%s): %s", files.description, exc)
            await asyncio.sleep(2)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = AsyncJobStore(settings)
        app.state.store = store
        indexes = asyncio.create_task(_ensure_indexes(store))
        log.info("job files: %s", app.state.files.description)
        bucket = asyncio.create_task(_prepare(app.state.files))
        warm = asyncio.create_task(asyncio.to_thread(broker.warm_up))
        app.state.jobs.start()  # subscribes to the notices for good: the cache needs them
        yield
        app.state.jobs.stop()
        warm.cancel()
        indexes.cancel()
        bucket.cancel()
        await app.state.notices.close()
        await store.close()
        state.close()

    docs = settings.docs_enabled
    app = FastAPI(
        title="Product-data cleaning service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        separate_input_output_schemas=False,
        openapi_tags=[
            {"name": "jobs", "description": "Submit, follow, download, cancel, delete."},
            {"name": "health", "description": "Liveness and readiness."},
            {"name": "problems", "description": "The kinds of error documents (RFC 9457)."},
        ],
    )
    app.state.settings = settings
    app.state.files = open_storage(settings)
    app.state.notices = Listener(settings.redis_url, name="cleaning-api")  # at first waiter
    app.state.jobs = JobCache(app.state.notices, max_age=settings.job_cache_seconds)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(submit.router)
    app.include_router(jobs.router)
    app.include_router(problems.router)
    openapi.install(app)
    install_docs(app)
    install_log_context(app)
    state = monitoring.instrument(app, settings)
    app.add_middleware(BodyGuard, limit=settings.max_upload_bytes + (1 << 20))
    return app


app = create_app()
# What exists once the app is made (modules, routes, schemas: ~90,000 objects) is never
# scanned by the garbage collector again: each full collection walked all of it, about
# 50 ms here during which no request moves, a latency spike for every request in flight.
# Once per process, at import (tests make many apps; freezing each would keep them all).
gc.collect()
gc.freeze()
