"""Every finished job as one MLflow run (when MLFLOW_TRACKING_URI is set).

The run holds the job's options (params), its report's counts (metrics), the report and a
before/after sample (artifacts), and its input and result as datasets with their location
and sha256, so a training run can name exactly the file it learnt from. A split job is one
run, logged once, after its merge.

Tracking never changes a job's outcome: a failure is written on the job (`mlflow_error`)
and the sweep retries it, backing off, MLFLOW_RETRIES times. A logging holds a lease on
the job (`mlflow_lease_ts`), so two workers never log one job at once, and the run id is
stored as soon as the run exists, so a retry finishes that run instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import PurePosixPath
from typing import Any

from src.core.config import Settings
from src.core.mlflow_rest import Dataset, MlflowError, MlflowTracking, now_ms
from src.core.storage import Storage
from src.data import sample
from src.data.options import CleaningOptions
from src.data.report import CleaningReport
from src.jobs import rules
from src.jobs.context import JobContext, notify
from src.jobs.model import JobStatus, TrackingStatus
from src.jobs.records import JobDoc
from src.jobs.store import JobStore

log = logging.getLogger(__name__)

RUN_STATUS = {
    JobStatus.SUCCEEDED: "FINISHED",
    JobStatus.FAILED: "FAILED",
    JobStatus.CANCELLED: "KILLED",
}
LEASE_SECONDS = 300.0  # longer than any logging: the HTTP timeout is 10 s a call
DIGEST_CHARS = 32  # MLflow keeps 36 characters of a digest; the full sha256 is in the profile
COLUMN_METRICS = (
    "values",
    "values_changed",
    "html_stripped",
    "entities_unescaped",
    "mojibake_fixed",
    "lossy_repaired",
    "lossy_remaining",
    "emptied",
    "empty",
    "mean_length_before",
    "mean_length_after",
)
REPORT_METRICS = (
    "rows_in",
    "rows_out",
    "duplicate_rows_dropped",
    "duplicate_ids",
    "formulas_neutralised",
    "duration_s",
    "rows_per_s",
)


def engine_version() -> str:
    try:
        return metadata.version("product-cleaning")
    except metadata.PackageNotFoundError:
        return "unknown"


def wanted(store: JobStore, settings: Settings, job_id: str) -> bool:
    """True once for a finished job whose run is to be logged (its final status marked it
    `pending`, `rules.tracking_fields`): the caller sends the task.

    If that task is lost, the sweep sends it again after REQUEUE_QUEUED_AFTER_SECONDS.
    """
    if not settings.mlflow_tracking_uri:
        return False
    again = time.time() + settings.requeue_queued_after_seconds
    return store.update_where(rules.tracking_unsent(job_id), mlflow_retry_ts=again) is not None


def track_job(ctx: JobContext, job_id: str) -> TrackingStatus | None:
    """Log the job's run; None when there is nothing to do (logged, or being logged)."""
    settings, now = ctx.settings, time.time()
    doc = ctx.store.update_where(
        rules.tracking_free(job_id, now),
        mlflow_lease_ts=now + LEASE_SECONDS,
        mlflow_retry_ts=now + LEASE_SECONDS + settings.requeue_queued_after_seconds,
    )
    if doc is None or not settings.mlflow_tracking_uri:
        return None
    try:
        with MlflowTracking(settings.mlflow_tracking_uri) as mlflow:
            run_id = _log_run(mlflow, ctx, doc)
    except MlflowError as exc:
        status = _failed(ctx, doc, str(exc))
    except Exception as exc:  # a readable error on the job; tracking never crashes a worker
        log.exception("job %s: logging to MLflow failed", job_id)
        status = _failed(ctx, doc, f"internal error: {type(exc).__name__}: {exc}")
    else:
        ctx.store.set_fields(
            job_id, mlflow_status=TrackingStatus.LOGGED, mlflow_error=None, mlflow_lease_ts=0.0
        )
        log.info("job %s: logged to MLflow as run %s", job_id, run_id)
        status = TrackingStatus.LOGGED
    notify(ctx.events.tracked, job_id, status)
    return status


def _failed(ctx: JobContext, doc: JobDoc, error: str) -> TrackingStatus:
    """Record the failure; the sweep retries after a backoff, MLFLOW_RETRIES times."""
    settings = ctx.settings
    attempts = (doc.get("mlflow_attempts") or 0) + 1
    final = attempts > settings.mlflow_retries
    status = TrackingStatus.FAILED if final else TrackingStatus.RETRYING
    backoff = min(settings.sweep_interval_seconds * 2 ** (attempts - 1), 600.0)
    ctx.store.set_fields(
        doc["_id"],
        mlflow_status=status,
        mlflow_error=error,
        mlflow_attempts=attempts,
        mlflow_lease_ts=0.0,
        mlflow_retry_ts=time.time() + backoff,
    )
    when = "given up" if final else f"retried in {backoff:g} s"
    log.warning("job %s: logging to MLflow failed (%s): %s", doc["_id"], when, error)
    return status


def _log_run(mlflow: MlflowTracking, ctx: JobContext, doc: JobDoc) -> str:
    """Create (or continue) the job's run, log everything, end it with the job's status."""
    job_id, settings = doc["_id"], ctx.settings
    run_id = doc.get("mlflow_run_id")
    if run_id:
        info = mlflow.run_info(run_id)
    else:
        experiment = mlflow.experiment_id(settings.mlflow_experiment)
        start = doc.get("started_ts") or doc["created_ts"]
        info = mlflow.create_run(experiment, run_name(doc), int(start * 1000), run_tags(doc))
        run_id = str(info["run_id"])
        ui = settings.mlflow_ui_url.rstrip("/")
        ctx.store.set_fields(
            job_id,
            mlflow_run_id=run_id,
            mlflow_experiment_id=experiment,
            mlflow_run_url=f"{ui}/#/experiments/{experiment}/runs/{run_id}" if ui else None,
        )
    report = CleaningReport.model_validate(doc["report"]) if doc.get("report") else None
    mlflow.log_batch(run_id, params(doc), metrics(doc, report), tags(doc), now_ms())
    if datasets := list(lineage(ctx.files, doc, report)):
        mlflow.log_inputs(run_id, datasets)
    for path, content, media_type in artifacts(ctx.files, doc):
        mlflow.upload_artifact(str(info["artifact_uri"]), path, content, media_type)
    end = doc.get("finished_ts") or time.time()
    mlflow.end_run(run_id, RUN_STATUS[JobStatus(doc["status"])], int(end * 1000))
    return run_id


def run_name(doc: JobDoc) -> str:
    return f"clean {doc['input_name']}"[:250]


def run_tags(doc: JobDoc) -> dict[str, str]:
    """Tags known when the run is created: who and what."""
    found = {
        "mlflow.source.name": "product-cleaning",
        "mlflow.source.type": "JOB",
        "cleaning.job_id": doc["_id"],
        "cleaning.input_name": doc["input_name"],
    }
    if doc.get("owner"):
        found["cleaning.owner"] = str(doc["owner"])
        found["mlflow.user"] = str(doc["owner"])
    return found


def tags(doc: JobDoc) -> dict[str, str]:
    """Tags known once the job is over."""
    found = {
        "cleaning.status": str(doc["status"]),
        "cleaning.attempts": str(doc.get("attempts") or 0),
    }
    if doc.get("parts_total"):
        found["cleaning.parts"] = str(doc["parts_total"])
    if doc.get("error"):
        found["cleaning.error"] = str(doc["error"])[:5000]
    return found


def params(doc: JobDoc) -> dict[str, str]:
    """Every cleaning option, the output format and the engine's version."""
    options = CleaningOptions.model_validate(doc["options"]).model_dump(mode="json")
    found = {name: _param(value) for name, value in options.items()}
    found["output_format"] = str(doc["output_format"])
    found["engine_version"] = engine_version()
    return found


def _param(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def metric_key(name: str) -> str:
    """MLflow allows letters, digits, `_ - . /` and spaces in a metric's name."""
    return re.sub(r"[^\w\-. /]", "_", name)


def metrics(doc: JobDoc, report: CleaningReport | None) -> dict[str, float]:
    """The report's counts (per column too), the job's times and sizes."""
    found: dict[str, float] = {"attempts": float(doc.get("attempts") or 0)}
    started, finished = doc.get("started_ts"), doc.get("finished_ts")
    if started and finished:
        found["job_seconds"] = round(finished - started, 3)
        found["queue_seconds"] = round(started - doc["created_ts"], 3)
    if doc.get("result_bytes"):
        found["result_bytes"] = float(doc["result_bytes"])
    if report is None:
        return found
    for name in REPORT_METRICS:
        found[name] = float(getattr(report, name))
    for column, counts in report.columns.items():
        for name in COLUMN_METRICS:
            found[metric_key(f"{column}.{name}")] = float(getattr(counts, name))
    return found


def lineage(files: Storage, doc: JobDoc, report: CleaningReport | None) -> Iterator[Dataset]:
    """The input and, once succeeded, the result: where they are and their sha256."""
    rows_in, rows_out = (report.rows_in, report.rows_out) if report else (None, None)
    # MLflow keeps one dataset per (experiment, name, digest), with the source it was first
    # logged with: the job in the name keeps each job's own location (files expire).
    job = f"(job {doc['_id']})"
    found = [
        (doc["input"], f"{doc['input_name']} {job}", "input", rows_in, doc.get("input_sha256"))
    ]
    result = doc.get("result")
    if doc["status"] == JobStatus.SUCCEEDED and result:
        name = f"{PurePosixPath(doc['input_name']).stem}.cleaned.{doc['output_format']} {job}"
        found.append((result, name, "output", rows_out, None))
    for key, name, context, rows, sha256 in found:
        try:
            yield _dataset(files, key, name, context, rows, sha256)
        except FileNotFoundError:  # a `source` its owner removed since: nothing to trace
            log.warning("job %s: %s %s is gone; not in the run's lineage", doc["_id"], context, key)


def _dataset(
    files: Storage, key: str, name: str, context: str, rows: int | None, sha256: str | None
) -> Dataset:
    """`sha256`: the file's, when known (an upload's, hashed as it came in); else read."""
    size = files.size(key)
    if size is None:
        raise FileNotFoundError(key)
    if sha256 is None:
        digest, size = hashlib.sha256(), 0
        for block in files.iter_bytes(key):
            digest.update(block)
            size += len(block)
        sha256 = digest.hexdigest()
    uri = files.uri(key)
    profile: dict[str, Any] = {"sha256": sha256, "bytes": size}
    if rows is not None:
        profile["rows"] = rows
    return Dataset(
        name=name[:500],
        digest=sha256[:DIGEST_CHARS],
        source_type="s3" if uri.startswith("s3://") else "local",
        source=json.dumps({"uri": uri}),
        context=context,
        profile=json.dumps(profile),
    )


def artifacts(files: Storage, doc: JobDoc) -> Iterator[tuple[str, bytes, str]]:
    """(path, content, media type): the report, and a before/after sample once succeeded."""
    if not doc.get("report"):
        return
    yield "report.json", json.dumps(doc["report"], indent=2).encode(), "application/json"
    if doc["status"] != JobStatus.SUCCEEDED:
        return
    options = CleaningOptions.model_validate(doc["options"])
    try:
        with files.fetch(doc["input"]) as source:
            changes = sample.changed_values(source, options)
    except FileNotFoundError:
        log.warning("job %s: its input is gone; no before/after sample", doc["_id"])
        return
    title = f"What cleaning changed in {doc['input_name']}"
    yield "sample/changes.csv", sample.to_csv(changes).encode(), "text/csv"
    yield "sample/changes.html", sample.to_html(changes, title).encode(), "text/html"
