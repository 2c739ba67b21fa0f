"""Every error is an RFC 9457 problem document (`application/problem+json`); never a traceback.

`type` is a stable URI per kind of problem (`/problems/<slug>`, which the API also
serves, so a client can look it up); `title` is that kind's summary, `detail` names
this occurrence's problem, and `errors` lists field-level validation problems.
Domain errors (`src.jobs.submit.SubmitError` kinds) are mapped to kinds here and only here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route

from src.api.models import FieldError, Problem
from src.core.storage import StorageUnavailable
from src.jobs import submit
from src.jobs.submit import describe_validation

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_LATER = {"Retry-After": "5"}


@dataclass(frozen=True)
class Kind:
    """One kind of problem: its URI slug, HTTP status and title."""

    slug: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return f"/problems/{self.slug}"


INVALID_REQUEST = Kind("invalid-request", 400, "The request is malformed")
INVALID_CURSOR = Kind("invalid-cursor", 400, "The pagination cursor is not valid")
INVALID_SOURCE = Kind("invalid-source", 400, "The source path may not be read")
UNAUTHORIZED = Kind("unauthorized", 401, "Missing or invalid API key")
NOT_FOUND = Kind("not-found", 404, "No such resource")
JOB_NOT_FOUND = Kind("job-not-found", 404, "No such job")
SOURCE_NOT_FOUND = Kind("source-not-found", 404, "No file at the source path")
RESULT_GONE = Kind("result-gone", 404, "The result file is gone")
METHOD_NOT_ALLOWED = Kind("method-not-allowed", 405, "Method not allowed on this path")
JOB_STATE = Kind("job-state-conflict", 409, "The job is not in a state that allows this")
IDEMPOTENCY_CONFLICT = Kind(
    "idempotency-conflict", 409, "Idempotency-Key already used with another request"
)
UPLOAD_TOO_LARGE = Kind("upload-too-large", 413, "The upload is larger than MAX_UPLOAD_MB")
UNSUPPORTED_MEDIA = Kind("unsupported-media-type", 415, "Unsupported media or file type")
VALIDATION = Kind("validation-failed", 422, "The request does not validate")
RATE_LIMITED = Kind("rate-limited", 429, "Too many requests")
INTERNAL = Kind("internal-error", 500, "Internal error")
UNAVAILABLE = Kind("service-unavailable", 503, "A backing service is unavailable")

KINDS: dict[str, Kind] = {
    kind.slug: kind
    for kind in (
        INVALID_REQUEST,
        INVALID_CURSOR,
        INVALID_SOURCE,
        UNAUTHORIZED,
        NOT_FOUND,
        JOB_NOT_FOUND,
        SOURCE_NOT_FOUND,
        RESULT_GONE,
        METHOD_NOT_ALLOWED,
        JOB_STATE,
        IDEMPOTENCY_CONFLICT,
        UPLOAD_TOO_LARGE,
        UNSUPPORTED_MEDIA,
        VALIDATION,
        RATE_LIMITED,
        INTERNAL,
        UNAVAILABLE,
    )
}
KIND_OF: dict[type[submit.SubmitError], Kind] = {
    submit.BadSource: INVALID_SOURCE,
    submit.SourceNotFound: SOURCE_NOT_FOUND,
    submit.IdempotencyConflict: IDEMPOTENCY_CONFLICT,
    submit.UploadTooLarge: UPLOAD_TOO_LARGE,
    submit.UnsupportedFile: UNSUPPORTED_MEDIA,
    submit.InvalidOptions: VALIDATION,
    submit.InvalidCallback: VALIDATION,
    submit.Unavailable: UNAVAILABLE,
}
BY_STATUS: dict[int, Kind] = {
    400: INVALID_REQUEST,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    413: UPLOAD_TOO_LARGE,
    415: UNSUPPORTED_MEDIA,
    422: VALIDATION,
    429: RATE_LIMITED,
    503: UNAVAILABLE,
}


class ApiError(Exception):
    """An answer of a given kind, with a message for the client."""

    def __init__(
        self,
        kind: Kind,
        detail: str,
        headers: dict[str, str] | None = None,
        errors: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = headers
        self.errors = errors


def problem(
    request: Request,
    kind: Kind,
    detail: str,
    headers: dict[str, str] | None = None,
    errors: Sequence[dict[str, Any]] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """The response; `extensions` are RFC 9457 extension members (e.g. /ready's checks)."""
    body = Problem(
        type=kind.type,
        title=kind.title,
        status=kind.status,
        detail=detail,
        instance=request.url.path,
        errors=[FieldError.model_validate(e) for e in errors] if errors else None,
        **(extensions or {}),
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=kind.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def shown(value: str, limit: int = 80) -> str:
    """A client's value quoted in a detail, cut short: a detail never echoes kilobytes."""
    return value if len(value) <= limit else f"{value[:limit]}…"


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's errors as `FieldError`s (loc, msg, type); inputs are never echoed."""
    return [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            **{k: str(e.get(k, "")) for k in ("msg", "type")},
        }
        for e in errors
    ]


def _routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router
        yield from _routes(inner.routes) if inner is not None else (route,)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the path the request matched: all its routes' (Starlette names only
    the first route's; GET and DELETE /jobs/{job_id} are two routes)."""
    path = request.url.path
    found = [
        r
        for r in _routes(request.app.router.routes)
        if isinstance(r, Route) and r.path_regex.match(path)
    ]
    matched = [r for r in found if r.path == found[0].path]
    return sorted({m for r in matched for m in r.methods or ()})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(request, exc.kind, exc.detail, exc.headers, exc.errors)

    @app.exception_handler(submit.SubmitError)
    async def _refused(request: Request, exc: submit.SubmitError) -> JSONResponse:
        kind = next((KIND_OF[k] for k in type(exc).__mro__ if k in KIND_OF), INVALID_REQUEST)
        headers = RETRY_LATER if kind is UNAVAILABLE else None
        return problem(request, kind, str(exc), headers, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        return problem(request, VALIDATION, describe_validation(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = BY_STATUS.get(exc.status_code) or Kind("http-error", exc.status_code, "HTTP error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(request, kind, str(exc.detail), headers or None)

    @app.exception_handler(PyMongoError)
    async def _store_down(request: Request, exc: PyMongoError) -> JSONResponse:
        log.warning("job store error: %s", exc)
        detail = "job store (MongoDB) unavailable; retry later"
        return problem(request, UNAVAILABLE, detail, RETRY_LATER)

    @app.exception_handler(StorageUnavailable)
    async def _files_down(request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("object store error: %s", exc)
        detail = "object store unavailable; retry later"
        return problem(request, UNAVAILABLE, detail, RETRY_LATER)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(request, INTERNAL, f"internal error ({type(exc).__name__})")


class BodyGuard:
    """Before any middleware: a Content-Length that is not a plain decimal number is a 400,
    and a body (chunked or not) past `limit` bytes a 413 once that many are read."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and not (value.isdigit() and len(value) <= 18):
                detail = "Content-Length must be a non-negative integer"
                await problem(Request(scope), INVALID_REQUEST, detail)(scope, receive, send)
                return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise ApiError(UPLOAD_TOO_LARGE, "the request body exceeds MAX_UPLOAD_MB")
            return message

        await self.app(scope, counted, send)
