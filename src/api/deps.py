"""Request dependencies, declared once: routes read as plain functions of typed parameters."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from src.api import errors, ratelimit
from src.api.errors import ApiError
from src.api.watch import JobWatcher
from src.core.config import Settings
from src.core.storage import Storage
from src.jobs.store import AsyncJobStore


# async: a plain `def` dependency would hop to the thread pool on every request.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> AsyncJobStore:
    return request.app.state.store


async def get_files(request: Request) -> Storage:
    return request.app.state.files


async def get_watcher(
    request: Request, store: Annotated[AsyncJobStore, Depends(get_store)]
) -> JobWatcher:
    """One watcher per app (and store), made at first use."""
    watcher: JobWatcher | None = getattr(request.app.state, "watcher", None)
    if watcher is None or watcher.store is not store:
        watcher = request.app.state.watcher = JobWatcher(store)
    return watcher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]
FilesDep = Annotated[Storage, Depends(get_files)]
JobStoreDep = Annotated[AsyncJobStore, Depends(get_store)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    key: Annotated[str | None, Security(_api_key_header)] = None,
) -> str | None:
    """When API_KEYS is set, X-API-Key must be one of them (compared in constant time).

    Then the caller's rate limit (RATE_LIMIT_PER_MINUTE, kept in Redis) applies.
    """
    keys = settings.api_key_list
    if not keys:
        await ratelimit.enforce(request, settings, None)
        return None
    given = (key or "").encode()
    # Compare against every key, so the time taken does not tell which one matched.
    ok = False
    for candidate in keys:
        ok |= hmac.compare_digest(given, candidate.encode())
    if not ok:
        raise ApiError(
            errors.UNAUTHORIZED,
            "missing or invalid API key (header X-API-Key)",
            headers={"WWW-Authenticate": "APIKey"},
        )
    await ratelimit.enforce(request, settings, key)
    return key


ApiKeyDep = Annotated[str | None, Depends(require_api_key)]
