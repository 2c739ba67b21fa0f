"""MLflow tracking against a real `mlflow server`, with the real API, worker and sweep.

Every job is read back through MLflow's own client (`MlflowClient`): its run, params,
metrics, artifacts, dataset inputs with their digests, and its status.

The first test stops the session's server (MLflow down), then starts it again: the
sweep's retry logs the run. The other tests start it if need be, so each also runs alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from src.data.options import CleaningOptions
from tests.conftest import serving
from tests.integration.conftest import Pair, pair, upload, wait_held, wait_job
from tests.support.hold import held
from tests.support.inputs import make_input
from tests.support.services import MlflowServer, S3Bucket, Stack

EXPERIMENT = "rakuten-cleaning-test"
KEY = "mlops-secret-key"
OWNER = "mlops-team"


def tracked(job: dict) -> bool:
    return job["mlflow_status"] in ("logged", "failed")


@pytest.fixture(scope="module")
def stack_with_mlflow(stack: Stack, mlflow: MlflowServer) -> Iterator[Pair]:
    """An API and a worker with beat (the sweep retries tracking) logging to `mlflow`."""
    env = {
        "MLFLOW_TRACKING_URI": mlflow.url,
        "MLFLOW_UI_URL": mlflow.url,
        "MLFLOW_EXPERIMENT": EXPERIMENT,
        "MLFLOW_RETRIES": "30",  # the first start of MLflow is slow: never give up meanwhile
        "API_KEYS": f"{OWNER}:{KEY}",
        "SPLIT_ABOVE_MB": "0.5",
        "PART_MB": "0.2",
    }
    with pair(stack, "mlflow", 5, beat=True, **env) as p:
        p.client.headers["X-API-Key"] = KEY
        yield p


@pytest.fixture(scope="module")
def client(mlflow: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow.url)


def finished(p: Pair, path: Path, **fields: str) -> dict:
    r = upload(p.client, path, **fields)
    assert r.status_code == 202, r.text
    return wait_job(p.client, r.json()["id"], tracked, timeout=240)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_mlflow_down_the_job_succeeds_and_a_retry_logs_it_later(
    stack_with_mlflow: Pair, mlflow: MlflowServer, sample_path: Path, client
) -> None:
    p = stack_with_mlflow
    mlflow.stop()  # another module may have started it
    r = upload(p.client, sample_path)
    assert r.status_code == 202, r.text
    down = wait_job(p.client, r.json()["id"], lambda j: j["mlflow_status"] is not None)
    down = wait_job(p.client, down["id"], lambda j: j["mlflow_error"] is not None)
    assert down["status"] == "succeeded"  # tracking never changes the job's outcome
    assert down["mlflow_status"] == "retrying", down
    assert "unreachable" in down["mlflow_error"] and mlflow.url in down["mlflow_error"]
    assert down["mlflow_run_id"] is None

    serving(mlflow)
    logged = wait_job(p.client, down["id"], tracked, timeout=240)
    assert logged["mlflow_status"] == "logged" and logged["mlflow_error"] is None
    run = client.get_run(logged["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["cleaning.job_id"] == down["id"]


def test_a_run_holds_options_counts_artifacts_and_lineage(
    stack_with_mlflow: Pair, mlflow: MlflowServer, sample_path: Path, client, tmp_path: Path
) -> None:
    serving(mlflow)
    p = stack_with_mlflow
    options = {"lowercase": True, "drop_duplicates": True}
    job = finished(p, sample_path, options=json.dumps(options))
    assert job["status"] == "succeeded" and job["mlflow_status"] == "logged", job
    run = client.get_run(job["mlflow_run_id"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert run.info.experiment_id == experiment.experiment_id
    assert job["mlflow_run_url"] == (
        f"{mlflow.url}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    )
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"clean {sample_path.name}"

    # params: every option, the output format, the engine's version
    expected = CleaningOptions(**options).model_dump(mode="json")
    params = run.data.params
    assert set(params) == {*expected, "output_format", "engine_version"}
    assert params["lowercase"] == "true" and params["drop_duplicates"] == "true"
    assert params["text_columns"] == "designation,description"
    assert params["output_format"] == "csv" and params["engine_version"]

    # metrics: the report's counts, per column too
    report, found = job["report"], run.data.metrics
    for name in ("rows_in", "rows_out", "duplicate_rows_dropped", "duration_s", "rows_per_s"):
        assert found[name] == pytest.approx(report[name]), name
    for column, counts in report["columns"].items():
        for name in ("values_changed", "html_stripped", "entities_unescaped", "mojibake_fixed"):
            assert found[f"{column}.{name}"] == counts[name], (column, name)
        assert found[f"{column}.lossy_repaired"] == counts["lossy_repaired"]
        assert found[f"{column}.lossy_remaining"] == counts["lossy_remaining"]
    assert found["description.html_stripped"] > 0  # the real rows hold HTML

    # tags: who and what
    tags = run.data.tags
    assert tags["cleaning.job_id"] == job["id"] and tags["cleaning.owner"] == OWNER
    assert tags["cleaning.attempts"] == "1" and tags["mlflow.user"] == OWNER

    # artifacts: the report, and a before/after sample a person can read
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"report.json", "sample"}
    got = Path(client.download_artifacts(run.info.run_id, "report.json", str(tmp_path)))
    assert json.loads(got.read_text()) == report
    folder = Path(client.download_artifacts(run.info.run_id, "sample", str(tmp_path)))
    rows = list(csv.DictReader(io.StringIO((folder / "changes.csv").read_text())))
    assert rows and all(r["before"] != r["after"] for r in rows)
    assert all(r["after"] == r["after"].lower() for r in rows)  # this job's options
    page = (folder / "changes.html").read_text()
    assert "<table>" in page and "<script" not in page.lower()

    # lineage: the input and the result, where they are, with their sha256
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"input", "output"}
    result = p.client.get(f"/jobs/{job['id']}/result").content
    for context, content in (("input", sample_path.read_bytes()), ("output", result)):
        dataset, profile = inputs[context], json.loads(inputs[context].profile)
        assert dataset.name.endswith(f" (job {job['id']})")
        assert profile["sha256"] == sha256(content) and profile["bytes"] == len(content)
        assert dataset.digest == sha256(content)[:32]
        assert dataset.source_type == "local"
        assert Path(json.loads(dataset.source)["uri"]).read_bytes() == content
    assert json.loads(inputs["input"].profile)["rows"] == report["rows_in"]
    assert json.loads(inputs["output"].profile)["rows"] == report["rows_out"]


def test_a_failed_job_is_a_failed_run_with_its_error(
    stack_with_mlflow: Pair, mlflow: MlflowServer, client, tmp_path: Path
) -> None:
    serving(mlflow)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    job = finished(stack_with_mlflow, bad)
    assert job["status"] == "failed" and job["mlflow_status"] == "logged", job
    run = client.get_run(job["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["cleaning.error"] == job["error"]
    assert "missing expected column(s)" in run.data.tags["cleaning.error"]
    contexts = [d.tags[0].value for d in run.inputs.dataset_inputs]
    assert contexts == ["input"]  # no result to trace


def test_a_cancelled_job_is_a_killed_run(
    stack_with_mlflow: Pair, mlflow: MlflowServer, sample_path: Path, client
) -> None:
    serving(mlflow)
    p = stack_with_mlflow
    with held(p.hold):
        r = upload(p.client, sample_path)
        assert r.status_code == 202, r.text
        wait_held(p.client, r.json()["id"], p.hold)
        assert p.client.post(f"/jobs/{r.json()['id']}/cancel").status_code in (200, 202)
        job = wait_job(p.client, r.json()["id"], tracked, timeout=240)
    assert job["status"] == "cancelled"
    assert client.get_run(job["mlflow_run_id"]).info.status == "KILLED"


def test_a_split_job_is_one_run(
    stack_with_mlflow: Pair, mlflow: MlflowServer, client, tmp_path: Path
) -> None:
    serving(mlflow)
    big = make_input(tmp_path / "big.csv", times=3)  # above SPLIT_ABOVE_MB
    job = finished(stack_with_mlflow, big)
    assert job["status"] == "succeeded" and job["progress"]["parts_total"] > 1, job
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`cleaning.job_id` = '{job['id']}'"
    )
    assert [r.info.run_id for r in runs] == [job["mlflow_run_id"]]
    run = runs[0]
    assert run.data.tags["cleaning.parts"] == str(job["progress"]["parts_total"])
    assert run.data.metrics["rows_in"] == job["report"]["rows_in"]


def test_lineage_of_a_job_in_the_bucket_names_its_s3_objects(
    stack: Stack, s3: S3Bucket, mlflow: MlflowServer, sample_path: Path, client
) -> None:
    serving(mlflow)
    env = {**s3.env("mlflow"), "MLFLOW_TRACKING_URI": mlflow.url, "MLFLOW_EXPERIMENT": EXPERIMENT}
    with pair(stack, "mlflow_s3", 6, **env) as p:
        job = finished(p, sample_path)
        result = p.client.get(f"/jobs/{job['id']}/result").content
    assert job["status"] == "succeeded" and job["mlflow_status"] == "logged", job
    run = client.get_run(job["mlflow_run_id"])
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    folder = f"s3://{s3.name}/mlflow/jobs/{job['id']}"
    for context, key, content in (
        ("input", "input.csv", sample_path.read_bytes()),
        ("output", "result.csv", result),
    ):
        dataset = inputs[context]
        assert dataset.source_type == "s3", dataset
        assert json.loads(dataset.source)["uri"] == f"{folder}/{key}"
        assert s3.read(f"mlflow/jobs/{job['id']}/{key}") == content
        assert json.loads(dataset.profile)["sha256"] == sha256(content)
    assert job["mlflow_run_url"] is None  # no MLFLOW_UI_URL: no link


def test_without_mlflow_settings_jobs_carry_no_tracking(api: httpx.Client, sample_path) -> None:
    r = upload(api, sample_path)
    assert r.status_code == 202, r.text
    job = wait_job(api, r.json()["id"])
    assert job["status"] == "succeeded"
    assert job["mlflow_status"] is None and job["mlflow_run_id"] is None
