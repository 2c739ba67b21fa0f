"""What the client raises: the service's refusals (problem documents) and failed jobs."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from src.api.models import Problem
from src.jobs.model import Job, JobStatus

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A body that is not a problem document (a proxy's error page) is quoted up to this many chars.
MAX_QUOTED = 200


class ClientError(Exception):
    """Base of every error `src.client` raises on its own (not httpx's transport errors)."""


class ApiError(ClientError):
    """The service answered with an error status; `problem` is its problem document."""

    def __init__(self, problem: Problem, headers: httpx.Headers | None = None) -> None:
        super().__init__(problem.detail or problem.title)
        self.problem = problem
        self.headers = headers or httpx.Headers()

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def type(self) -> str:
        return self.problem.type

    @property
    def title(self) -> str:
        return self.problem.title

    @property
    def detail(self) -> str:
        return self.problem.detail

    @property
    def instance(self) -> str | None:
        return self.problem.instance

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Field-level validation problems (`loc`, `msg`, `type`), for a 422."""
        return [e.model_dump() for e in self.problem.errors or []]

    @property
    def retry_after(self) -> float | None:
        """Seconds the service asked to wait (429, 503), when it said so."""
        try:
            return float(self.headers["retry-after"])
        except (KeyError, ValueError):
            return None

    def __str__(self) -> str:
        head = f"{self.status} {self.title}".strip()
        return f"{head}: {self.detail}" if self.detail and self.detail != self.title else head

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The problem document of an error response (read first), or one made from its status."""
        problem: Problem | None = None
        media = response.headers.get("content-type", "").partition(";")[0].strip()
        if media in (PROBLEM_MEDIA_TYPE, "application/json"):
            try:
                problem = Problem.model_validate(response.json())
            except (ValueError, ValidationError):  # not JSON, or JSON of another shape
                problem = None
        if problem is None:  # e.g. a proxy's HTML page: say what came back, briefly
            text = " ".join(response.text.split())[:MAX_QUOTED]
            status, title = response.status_code, response.reason_phrase
            problem = Problem(title=title, status=status, detail=text)
        if not problem.status:
            problem = problem.model_copy(update={"status": response.status_code})
        if problem.instance is None:
            problem = problem.model_copy(update={"instance": response.request.url.path})
        return cls(problem, response.headers)


class JobFailed(ClientError):
    """The job ended `failed` or `cancelled`; `job` is its last state, the message its error."""

    def __init__(self, job: Job) -> None:
        if job.error:
            message = job.error
        elif job.status == JobStatus.CANCELLED:
            message = f"job {job.id} was cancelled"
        else:
            message = f"job {job.id} ended {job.status}"
        super().__init__(message)
        self.job = job


def job_of(response: httpx.Response) -> Job:
    """The job an answer carries, or the `ApiError` of its problem document."""
    if not response.is_success:
        raise ApiError.from_response(response)
    return Job.model_validate_json(response.content)
