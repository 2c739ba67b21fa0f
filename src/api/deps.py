"""Request dependencies, declared once: routes read as plain functions of typed parameters."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from src.api import errors, ratelimit
from src.api.errors import ApiError
from src.api.jobcache import JobCache
from src.api.watch import JobWatcher
from src.core.config import Settings
from src.core.notices import Listener
from src.core.storage import Storage
from src.jobs.async_store import AsyncJobStore
from src.jobs.records import JobDoc


# async: a plain `def` dependency would hop to the thread pool on every request.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> AsyncJobStore:
    return request.app.state.store


async def get_files(request: Request) -> Storage:
    return request.app.state.files


async def get_notices(request: Request) -> Listener:
    """The app's one subscription to job change notices (made by `create_app`)."""
    return request.app.state.notices


async def get_job_cache(request: Request) -> JobCache:
    """The app's cache of job documents (made by `create_app`, started with the app)."""
    return request.app.state.jobs


def job_watcher(request: Request, store: AsyncJobStore) -> JobWatcher:
    """One watcher per app (and store), made at first use; a plain function, so that a
    route needing it only sometimes (`?wait=`) does not resolve it on every request."""
    state = request.app.state
    watcher: JobWatcher | None = getattr(state, "watcher", None)
    if watcher is None or watcher.store is not store:
        fallback = state.settings.watch_fallback_seconds
        watcher = state.watcher = JobWatcher(store, state.notices, fallback)
    return watcher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
NoticesDep = Annotated[Listener, Depends(get_notices)]
FilesDep = Annotated[Storage, Depends(get_files)]
JobStoreDep = Annotated[AsyncJobStore, Depends(get_store)]
JobCacheDep = Annotated[JobCache, Depends(get_job_cache)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key of API_KEYS (a tenant), an admin key, or anyone without keys."""

    name: str | None  # the key's name, shown as a job's owner; None without API_KEYS
    digest: str | None  # sha256 of the key: a job's owner is matched on it
    admin: bool  # sees and cancels every job (ADMIN_API_KEYS, or no keys at all)
    who: str  # whose budget a request spends: the key's digest, or the client address

    def sees(self, doc: JobDoc) -> bool:
        return self.admin or doc.get("owner_hash") == self.digest


def authenticate(settings: Settings, request: Request, key: str | None) -> Caller:
    """When API_KEYS is set, X-API-Key must be one of them (compared in constant time)."""
    keys = settings.keys
    if not keys:
        address = request.client.host if request.client else "unknown"
        return Caller(None, None, admin=True, who=address)
    given = (key or "").encode()
    found = None
    # Compare against every key, so the time taken does not tell which one matched.
    for candidate in keys:
        if hmac.compare_digest(given, candidate.key.encode()):
            found = candidate
    if found is None:
        raise ApiError(
            errors.UNAUTHORIZED,
            "missing or invalid API key (header X-API-Key)",
            headers={"WWW-Authenticate": "APIKey"},
        )
    return Caller(found.name, found.digest, found.admin, who=found.digest)


# `reader` and `submitter` take the key and the settings themselves rather than through
# dependencies of their own: FastAPI solves each dependency on every request, and these
# run on every request but health, metrics and docs.
ApiKey = Annotated[str | None, Security(_api_key_header)]


async def _within(request: Request, key: str | None, budget: ratelimit.Budget) -> Caller:
    settings: Settings = request.app.state.settings
    caller = authenticate(settings, request, key)
    await ratelimit.enforce(request, settings, caller.who, budget)
    return caller


async def reader(request: Request, key: ApiKey = None) -> Caller:
    """A caller within its read budget (READ_RATE_LIMIT_PER_MINUTE)."""
    return await _within(request, key, ratelimit.READS)


async def submitter(request: Request, key: ApiKey = None) -> Caller:
    """A caller within its submission budget (RATE_LIMIT_PER_MINUTE)."""
    return await _within(request, key, ratelimit.SUBMISSIONS)


ReaderDep = Annotated[Caller, Depends(reader)]
SubmitterDep = Annotated[Caller, Depends(submitter)]
