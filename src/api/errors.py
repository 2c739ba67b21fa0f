"""Every error is JSON with a `detail` that names the problem; never a traceback.

Domain errors (`src.jobs.submit.SubmitError` and its kinds) are mapped to HTTP
statuses here and only here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from src.jobs import submit
from src.jobs.submit import describe_validation

log = logging.getLogger(__name__)

RETRY_LATER = {"Retry-After": "5"}
STATUS_OF: dict[type[submit.SubmitError], int] = {
    submit.BadSource: 400,
    submit.SourceNotFound: 404,
    submit.IdempotencyConflict: 409,
    submit.UploadTooLarge: 413,
    submit.UnsupportedFile: 415,
    submit.InvalidOptions: 422,
    submit.Unavailable: 503,
}


class ApiError(Exception):
    """An answer with a status and a message for the client."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def status_of(exc: submit.SubmitError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(submit.SubmitError)
    async def _refused(_: Request, exc: submit.SubmitError) -> JSONResponse:
        status = status_of(exc)
        headers = RETRY_LATER if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(
            {"detail": describe_validation(errors), "errors": errors}, status_code=422
        )

    @app.exception_handler(PyMongoError)
    async def _store_down(_: Request, exc: PyMongoError) -> JSONResponse:
        log.warning("job store error: %s", exc)
        return JSONResponse(
            {"detail": "job store (MongoDB) unavailable; retry later"},
            status_code=503,
            headers=RETRY_LATER,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)
