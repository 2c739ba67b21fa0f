"""A Python client of the cleaning service: `CleaningClient` and what it raises.

    from src.client import CleaningClient

    with CleaningClient("http://127.0.0.1:8000", api_key="...") as client:
        job = client.clean("X_test.csv", "X_test.cleaned.csv", {"lowercase": True})
        print(job.report.summary())

Typed with the API's own models (`Job`, `CleaningOptions`, `CleaningReport`); needs
httpx and httpx-sse (the `client` extra), never the cleaning engine. docs/client.md.
"""

from src.client.client import CleaningClient, JobPage
from src.client.errors import ApiError, ClientError, JobFailed, Problem
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.jobs.model import Job, JobProgress, JobStatus

__all__ = [
    "ApiError",
    "CleaningClient",
    "CleaningOptions",
    "CleaningReport",
    "ClientError",
    "Job",
    "JobFailed",
    "JobPage",
    "JobProgress",
    "JobStatus",
    "Problem",
]
