"""Request dependencies, declared once: routes read as plain functions of typed parameters."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from src.api import ratelimit
from src.api.errors import ApiError
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


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
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
            401,
            "missing or invalid API key (header X-API-Key)",
            headers={"WWW-Authenticate": "APIKey"},
        )
    await ratelimit.enforce(request, settings, key)
    return key


ApiKeyDep = Annotated[str | None, Depends(require_api_key)]
