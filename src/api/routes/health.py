"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from src.api import errors, openapi
from src.api.deps import JobStoreDep, SettingsDep
from src.jobs.async_store import AsyncJobStore

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    operation_id="getHealth",
    summary="Alive",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def health() -> dict[str, str]:
    """The process answers; says nothing about MongoDB or Redis (see /ready)."""
    return {"status": "ok"}


async def _check_store(store: AsyncJobStore) -> str:
    await store.ping()
    return "ok"


async def _check_redis(url: str, timeout: float) -> str:
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        await client.ping()
        return "ok"
    finally:
        await client.aclose()


@router.get(
    "/ready",
    operation_id="getReadiness",
    summary="Ready: MongoDB and Redis reachable",
    responses={
        200: {
            "content": {
                "application/json": {"example": {"status": "ready", "mongodb": "ok", "redis": "ok"}}
            }
        },
        **openapi.problems(errors.UNAVAILABLE, common=False),
    },
)
async def ready(request: Request, store: JobStoreDep, settings: SettingsDep) -> JSONResponse:
    checks = {
        "mongodb": _check_store(store),
        "redis": _check_redis(settings.redis_url, settings.broker_timeout_seconds),
    }
    results = await asyncio.gather(*checks.values(), return_exceptions=True)
    body: dict[str, str] = {}
    for name, result in zip(checks, results, strict=True):
        body[name] = result if isinstance(result, str) else f"unavailable: {type(result).__name__}"
    if all(v == "ok" for v in body.values()):
        return JSONResponse({"status": "ready", **body})
    down = "; ".join(f"{name} {state}" for name, state in body.items() if state != "ok")
    detail = f"not ready: {down}"
    # Each check's state stays readable by name, as extension members.
    return errors.problem(request, errors.UNAVAILABLE, detail, errors.RETRY_LATER, extensions=body)
