"""Clean a file through the product-cleaning service, from Airflow, without holding a worker.

`CleaningJobOperator` submits the job with the service's Python client (`src.client`) and
defers; `CleaningJobTrigger` long-polls `GET /jobs/{id}?wait=` in the triggerer (async
httpx) until the job is finished; the operator then resumes, pushes the outcome to XCom,
or fails the task with the job's error.

This module lives in Airflow's plugins folder, not beside the DAG: every Airflow component
(the triggerer included) has the plugins folder on `sys.path`, so the trigger's classpath,
`cleaning_service.CleaningJobTrigger`, imports wherever the trigger runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from airflow.sdk import BaseHook, BaseOperator, Connection, Context
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from src.client import ApiError, CleaningClient, Job, JobFailed, JobStatus
from src.client.client import API_KEY_HEADER, MAX_SERVER_WAIT
from src.client.errors import job_of
from src.client.events import job_path
from src.jobs.model import TERMINAL

CONN_ID = "cleaning_api"
# Statuses worth asking again: the service is busy, restarting or behind a failing proxy.
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0  # seconds between two attempts after a transport error
# A finished job's MLflow run is logged just after it ends (`mlflow_status` "pending"):
# wait that long at most for its run id, then go on without it.
TRACKING_GRACE = 120.0


def api_target(conn: Connection) -> tuple[str, str | None]:
    """The API's base URL and key of an Airflow connection: `host` is the base URL
    (`http://api:8000`; or a bare host name, with `schema` http/https and `port`) and
    `password` the API key (sent as X-API-Key; empty when the service has no keys)."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        raise AirflowFailException(
            f"connection {conn.conn_id!r} has no host: set it to the cleaning API's base URL"
        )
    if "://" not in host:
        scheme = conn.schema if conn.schema in ("http", "https") else "http"
        host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    return host, conn.password or None


def idempotency_key(context: Context) -> str:
    """One key per DAG run and task: a retry, a cleared task or a second run of the same
    logical date gets the job the first submission created (the service answers the same
    job for the same key and request). A run without a logical date uses its run id."""
    ti = context["ti"]
    logical_date = context.get("logical_date")
    run = logical_date.isoformat() if logical_date else ti.run_id
    mapped = f"[{ti.map_index}]" if ti.map_index >= 0 else ""
    return f"airflow:{ti.dag_id}:{ti.task_id}{mapped}:{run}"


class CleaningJobTrigger(BaseTrigger):
    """Fires once the job `job_id` is finished, with its JSON as the service sent it, and
    once its MLflow run is logged where the service tracks jobs (TRACKING_GRACE at most).

    Transport errors and transient statuses are retried (the operator's `timeout` bounds
    the wait); any other refusal (404: the job was deleted; 401) ends the wait with it.
    The API key is read from the connection here, never stored in the trigger's kwargs.
    """

    def __init__(self, job_id: str, conn_id: str = CONN_ID, wait: float = MAX_SERVER_WAIT):
        super().__init__()
        self.job_id = job_id
        self.conn_id = conn_id
        self.wait = min(wait, MAX_SERVER_WAIT)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs = {"job_id": self.job_id, "conn_id": self.conn_id, "wait": self.wait}
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def run(self) -> AsyncIterator[TriggerEvent]:
        base, key = api_target(await BaseHook.aget_connection(self.conn_id))
        headers = {API_KEY_HEADER: key} if key else {}
        timeout = httpx.Timeout(30.0, read=30.0 + self.wait)
        backoff = 1.0
        tracked_by: float | None = None  # the end of the wait for the MLflow run id
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout) as http:
            while True:
                try:
                    response = await http.get(job_path(self.job_id), params={"wait": self.wait})
                    job = job_of(response)
                except (httpx.TransportError, ApiError) as exc:
                    if isinstance(exc, ApiError) and exc.status not in TRANSIENT:
                        yield TriggerEvent({"status": "error", "message": str(exc)})
                        return
                    delay = exc.retry_after if isinstance(exc, ApiError) else None
                    self.log.warning("job %s: %s; asking again", self.job_id, str(exc) or repr(exc))
                    await asyncio.sleep(delay or backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                backoff = 1.0
                if job.status in TERMINAL:
                    data = response.json()
                    tracked_by = tracked_by or loop.time() + TRACKING_GRACE
                    if data.get("mlflow_status") == "pending" and loop.time() < tracked_by:
                        await asyncio.sleep(1.0)  # its MLflow run is being logged
                        continue
                    yield TriggerEvent({"status": "finished", "job": data})
                    return
                self.log.info("job %s %s (%d rows)", job.id, job.status, job.progress.rows_done)


class CleaningJobOperator(BaseOperator):
    """Clean `input_path` (a file on the Airflow worker, uploaded) or `source` (a path
    under the service's DATA_DIR, or a key in its bucket, that the service reads itself)
    with `options` (the service's cleaning options) into `output_format` (csv, parquet).

    XCom: `job_id` (at once), then `report`, `result_url` (absolute) and, when the job
    has one, `mlflow_run_id`; the return value is the finished job's JSON. A job that
    ends failed or cancelled fails the task with its error, without retries (the same
    key would only return the same job).
    """

    template_fields = ("input_path", "source", "options", "output_format")

    def __init__(
        self,
        *,
        input_path: str | None = None,
        source: str | None = None,
        options: Mapping[str, Any] | None = None,
        output_format: str = "csv",
        conn_id: str = CONN_ID,
        wait: float = MAX_SERVER_WAIT,
        timeout: timedelta = timedelta(hours=6),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_path = input_path
        self.source = source
        self.options = options
        self.output_format = output_format
        self.conn_id = conn_id
        self.wait = wait
        self.timeout = timeout

    def execute(self, context: Context) -> None:
        if bool(self.input_path) == bool(self.source):
            raise AirflowFailException("give either input_path (a file to upload) or source")
        if self.input_path and not Path(self.input_path).is_file():  # not worth a retry
            raise AirflowFailException(f"input_path {self.input_path!r}: no such file")
        base, key = api_target(BaseHook.get_connection(self.conn_id))
        idem = idempotency_key(context)
        options = dict(self.options or {})
        with CleaningClient(base, api_key=key) as client:
            try:
                if self.input_path:
                    job = client.submit(self.input_path, options, self.output_format, idem)
                else:
                    job = client.submit_source(self.source, options, self.output_format, idem)
            except ApiError as exc:
                if exc.status in TRANSIENT:
                    raise  # retried by Airflow, with the same key: never a second job
                raise AirflowFailException(f"the cleaning service refused the job: {exc}") from exc
        self.log.info("job %s %s (Idempotency-Key %s) at %s", job.id, job.status, idem, base)
        context["ti"].xcom_push(key="job_id", value=job.id)
        # Deferred even when the job is already finished (a replayed key): one path for all.
        self.defer(
            trigger=CleaningJobTrigger(job.id, self.conn_id, self.wait),
            method_name="execute_complete",
            timeout=self.timeout,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") != "finished":
            raise AirflowFailException(f"waiting for the cleaning job: {event.get('message')}")
        data: dict[str, Any] = event["job"]
        job = Job.model_validate(data)
        ti = context["ti"]
        ti.xcom_push(key="job_id", value=job.id)
        if job.status != JobStatus.SUCCEEDED:
            failure = JobFailed(job)  # the job's error, as the client words it
            message = f"cleaning job {job.id} {job.status}: {failure}"
            self.log.error("%s", message)
            raise AirflowFailException(message) from failure
        base, _ = api_target(BaseHook.get_connection(self.conn_id))
        ti.xcom_push(key="report", value=data.get("report"))
        ti.xcom_push(key="result_url", value=f"{base}/{str(data['result_url']).lstrip('/')}")
        if run_id := data.get("mlflow_run_id"):
            ti.xcom_push(key="mlflow_run_id", value=run_id)
        rows = job.report.rows_out if job.report else None
        self.log.info("cleaning job %s succeeded: %s rows out", job.id, rows)
        return data
