"""Request and response bodies, with the examples Swagger shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, TypeAdapter

from src.data.formats import DEFAULT_OUTPUT, OUTPUT_FORMATS, OutputFormat
from src.data.options import CleaningOptions
from src.jobs.model import Job

JOB_EXAMPLE: dict[str, Any] = {
    "id": "019ac5f0a3b2c4d5e6f7a8",
    "status": "succeeded",
    "created_at": "2026-11-27T14:40:00Z",
    "started_at": "2026-11-27T14:40:00.050000Z",
    "finished_at": "2026-11-27T14:40:00.400000Z",
    "progress": {"rows_done": 672, "rows_total": 672, "bytes_done": 407778, "bytes_total": 407778},
    "attempts": 1,
    "error": None,
    "report": {"rows_in": 672, "rows_out": 672, "duplicate_ids": 0, "columns": {"...": {}}},
    "options": {"lowercase": False},
    "input_name": "X_test_update.csv",
    "output_format": "csv",
    "cancel_requested": False,
    "callback_url": None,
    "callback_status": None,
    "callback_error": None,
    "result_url": "/jobs/019ac5f0a3b2c4d5e6f7a8/result",
}


CALLBACK_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


class SourceRequest(BaseModel):
    """Clean a file already under DATA_DIR."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "source": "raw/X_test_update.csv",
                    "options": {"lowercase": True, "drop_duplicates": True},
                    "output_format": "csv",
                }
            ]
        },
    )

    source: str = Field(description="A path relative to DATA_DIR, e.g. raw/X_test.csv")
    options: CleaningOptions = Field(default_factory=CleaningOptions)
    output_format: OutputFormat = DEFAULT_OUTPUT
    callback_url: HttpUrl | None = Field(
        None, description="The final job JSON is POSTed here when the job ends."
    )


class JobList(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class ErrorBody(BaseModel):
    detail: str = Field(examples=["job 019ac5f0a3b2c4d5e6f7a8 not found"])


def error(description: str, example: str) -> dict[str, Any]:
    """An OpenAPI response entry for an error, with its example."""
    return {
        "model": ErrorBody,
        "description": description,
        "content": {"application/json": {"example": {"detail": example}}},
    }


JOB_RESPONSE = {"content": {"application/json": {"example": JOB_EXAMPLE}}}
NOT_FOUND = error("Unknown job id", "job 019ac5f0a3b2c4d5e6f7a8 not found")
UNAUTHORIZED = error(
    "API_KEYS is set and X-API-Key is missing or wrong",
    "missing or invalid API key (header X-API-Key)",
)
UNAVAILABLE = error(
    "MongoDB or Redis is down; nothing was created",
    "broker (Redis) unavailable: job not created; retry later",
)

SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV, Parquet or JSON Lines",
                        },
                        "options": {
                            "type": "string",
                            "description": "CleaningOptions as JSON",
                            "example": '{"lowercase": true}',
                        },
                        "output_format": {
                            "type": "string",
                            "enum": list(OUTPUT_FORMATS),
                            "default": DEFAULT_OUTPUT,
                        },
                        "callback_url": {"type": "string", "format": "uri"},
                    },
                }
            },
            "application/json": {
                "schema": SourceRequest.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                ),
                "example": {"source": "raw/X_test_update.csv", "options": {"lowercase": True}},
            },
        },
    }
}
