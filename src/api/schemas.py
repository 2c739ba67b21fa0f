"""Request and response bodies, with the examples Swagger shows: all generated from models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    Json,
    WithJsonSchema,
    field_validator,
)

from src.data.formats import DEFAULT_OUTPUT, OutputFormat
from src.data.options import CleaningOptions

EXAMPLE_ID = "019ac5f0a3b2c4d5e6f7a8"
JOB_EXAMPLE: dict[str, Any] = {
    "id": EXAMPLE_ID,
    "status": "succeeded",
    "created_at": "2026-11-27T14:40:00Z",
    "started_at": "2026-11-27T14:40:00.050000Z",
    "finished_at": "2026-11-27T14:40:00.400000Z",
    "progress": {"rows_done": 672, "rows_total": 672, "bytes_done": 407778, "bytes_total": 407778},
    "attempts": 1,
    "error": None,
    "report": {"rows_in": 672, "rows_out": 672, "duplicate_ids": 0, "columns": {}},
    "options": {"lowercase": False},
    "input_name": "X_test_update.csv",
    "output_format": "csv",
    "cancel_requested": False,
    "callback_url": None,
    "callback_status": None,
    "callback_error": None,
    "result_url": f"/jobs/{EXAMPLE_ID}/result",
}
CALLBACK_DESCRIPTION = "The final job JSON is POSTed here (http or https) when the job ends."


def _form_schema(schema: dict[str, Any]) -> None:
    """No `default: null` on optional form fields: Swagger UI would send the text "null"."""
    for field in schema.get("properties", {}).values():
        if field.get("default", ...) is None:
            del field["default"]


@dataclass(frozen=True)
class FilePart:
    """A file part of a multipart body, as `UploadRequest.file` sees it: its file name
    (its bytes were streamed to storage as they arrived, never kept here)."""

    filename: str


class UploadRequest(BaseModel):
    """Clean an uploaded file (`multipart/form-data`)."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="ignore", json_schema_extra=_form_schema
    )

    file: Annotated[
        Any,
        WithJsonSchema(
            {
                "type": "string",
                "format": "binary",
                "description": "The file to clean: .csv/.txt, .parquet/.pq or .jsonl/.ndjson.",
            }
        ),
    ]
    options: Annotated[
        Json[CleaningOptions] | None,
        # A plain string here: Swagger UI shows a string with a media type as a file picker.
        WithJsonSchema(
            {
                "type": "string",
                "description": "CleaningOptions (see that schema) as JSON text; "
                "the defaults when absent.",
                "examples": ['{"lowercase": true, "drop_duplicates": true}'],
            }
        ),
    ] = None
    output_format: OutputFormat = DEFAULT_OUTPUT
    callback_url: Annotated[
        HttpUrl | None,
        # An empty example: Swagger UI would otherwise fill in https://example.com/.
        WithJsonSchema(
            {
                "type": "string",
                "format": "uri",
                "description": CALLBACK_DESCRIPTION,
                "examples": [""],
            }
        ),
    ] = None

    @field_validator("file")
    @classmethod
    def _a_file(cls, value: Any) -> FilePart:
        if not isinstance(value, FilePart):
            raise ValueError("must be a file part (the CSV, Parquet or JSON Lines file)")
        return value


class SourceRequest(BaseModel):
    """Clean a file already under DATA_DIR (or in the bucket), by its relative path."""

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

    source: str = Field(
        min_length=1,
        max_length=1024,
        description="A path relative to DATA_DIR, e.g. raw/X_test.csv",
    )
    options: CleaningOptions = Field(default_factory=CleaningOptions)
    output_format: OutputFormat = DEFAULT_OUTPUT
    callback_url: HttpUrl | None = Field(None, description=CALLBACK_DESCRIPTION)
