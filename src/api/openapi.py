"""The OpenAPI document: generated from the models, with every error documented.

FastAPI generates the schemas of what routes declare. The submission route reads
its body itself (a multipart upload or a JSON source, one operation), so its two
bodies, and the problem document every error returns, are added to the components
from their pydantic models here: nothing is written by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Path
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from src.api import errors
from src.api.errors import PROBLEM_MEDIA_TYPE, Kind
from src.api.models import Problem
from src.api.schemas import EXAMPLE_ID, JOB_EXAMPLE, SourceRequest, UploadRequest

EXTRA_MODELS: list[type[BaseModel]] = [Problem, UploadRequest, SourceRequest]
REF = "#/components/schemas/{model}"

# One example message per kind of problem, as the API words it.
EXAMPLE_DETAIL: dict[str, str] = {
    "invalid-request": "Too many files. Maximum number of files is 1.",
    "invalid-cursor": "invalid cursor: pass next_cursor from the previous page",
    "invalid-source": "source must not contain '..'",
    "unauthorized": "missing or invalid API key (header X-API-Key)",
    "not-found": "Not Found",
    "job-not-found": f"job {EXAMPLE_ID} not found",
    "source-not-found": "source not found under DATA_DIR: raw/X.csv",
    "result-gone": f"result of job {EXAMPLE_ID} is gone (expired or removed)",
    "method-not-allowed": "Method Not Allowed",
    "job-state-conflict": "job is running; the result is available once it succeeded",
    "idempotency-conflict": "Idempotency-Key already used with a different request",
    "upload-too-large": "upload exceeds MAX_UPLOAD_MB (512 MB)",
    "unsupported-media-type": "unsupported file type '.xlsx': send a .csv, .parquet or .jsonl file",
    "validation-failed": "invalid options: min_length: Input should be greater than or equal to 0",
    "rate-limited": "rate limit exceeded: 60 requests per minute; retry in 12s",
    "internal-error": "internal error (RuntimeError)",
    "service-unavailable": "job store (MongoDB) unavailable; retry later",
}
# What any job route may answer besides its own errors.
COMMON = (
    errors.UNAUTHORIZED,
    errors.RATE_LIMITED,
    errors.INTERNAL,
    errors.UNAVAILABLE,
)
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def path_param(example: str) -> Any:
    """The `job_id` path parameter, described once."""
    return Path(description="The job's id, as `POST /jobs/clean` answered it.", examples=[example])


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _example(kind: Kind) -> dict[str, Any]:
    value = Problem(
        type=kind.type, title=kind.title, status=kind.status, detail=EXAMPLE_DETAIL[kind.slug]
    ).model_dump(exclude_none=True)
    if kind is errors.VALIDATION:
        value["errors"] = [
            {"loc": ["body", "options", "min_length"], "msg": "Input should be …", "type": "x"}
        ]
    return {"summary": kind.title, "value": value}


def problems(*kinds: Kind, common: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI response entries for these kinds of problem (and those any job route has)."""
    by_status: dict[int, list[Kind]] = {}
    for kind in dict.fromkeys((*kinds, *(COMMON if common else ()))):
        by_status.setdefault(kind.status, []).append(kind)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        entry: dict[str, Any] = {
            "description": "; ".join(k.title for k in group),
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "schema": ref(Problem),
                    "examples": {k.slug: _example(k) for k in group},
                }
            },
        }
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        responses[status] = entry
    return responses


def job_response(description: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"example": JOB_EXAMPLE}},
        }
    }


def _drop_fastapi_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 (its own body shape) for any route with parameters; where a
    route declares none of its own, no parameter of it can fail validation: drop it."""
    fastapi_ref = REF.format(model="HTTPValidationError")
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            entry = operation.get("responses", {}).get("422", {})
            content = entry.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == fastapi_ref:
                del operation["responses"]["422"]
    if fastapi_ref not in json.dumps(schema.get("paths", {})):
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)


def install(app: FastAPI) -> None:
    """Generate the document once, with the extra models in its components."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema(
                [(m, "validation") for m in EXTRA_MODELS], ref_template=REF
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            _drop_fastapi_422(schema)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
