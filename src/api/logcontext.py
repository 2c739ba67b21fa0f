"""A request for one job (`/jobs/{job_id}…`) logs with that job's id (`log_context`).

An ASGI middleware rather than a dependency, so that it spans the whole request:
the route, a streamed response and uvicorn's access line. It runs before routing,
so it binds the id lazily: Starlette's router writes the matched `path_params` into
the request's scope, and each record reads `job_id` from there when it is logged.
No list of paths, no knowledge of the id's format.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from src.core.logging import log_context


class JobLogContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def job_id() -> str | None:
            value = scope.get("path_params", {}).get("job_id")
            return value if isinstance(value, str) else None

        with log_context(job_id=job_id):
            await self.app(scope, receive, send)


def install_log_context(app: FastAPI) -> None:
    """Add the middleware to the app (before it starts)."""
    app.add_middleware(JobLogContext)
