"""The API's response models that clients share: importable without FastAPI.

`src.client` reads these very models; the API's routes answer them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from src.jobs.model import Job


class FieldError(BaseModel):
    """One field that does not validate."""

    loc: list[str | int] = Field(examples=[["body", "options", "min_length"]])
    msg: str = Field(examples=["Input should be greater than or equal to 0"])
    type: str = Field(examples=["greater_than_equal"])


class Problem(BaseModel):
    """An RFC 9457 problem document: what went wrong, for a program and for a person."""

    model_config = ConfigDict(extra="allow")  # RFC 9457 extension members

    type: str = Field(
        "about:blank",
        description="A URI per kind of problem; GET it for the kind's description.",
        examples=["/problems/job-not-found"],
    )
    title: str = Field(examples=["No such job"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["job 019ac5f0a3b2c4d5e6f7a8 not found"])
    instance: str | None = Field(None, description="The request path.", examples=["/jobs/x"])
    errors: list[FieldError] | None = Field(None, description="Field-level validation problems.")


class JobList(BaseModel):
    """One page of jobs, newest first."""

    items: list[Job]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class ProblemKind(BaseModel):
    """What a `type` URI of a problem document stands for."""

    type: str = Field(examples=["/problems/job-not-found"])
    title: str = Field(examples=["No such job"])
    status: int = Field(examples=[404])
