"""The Airflow DAG (integrations/airflow) against the real service: Airflow 3, installed in
its own environment (`make airflow`), runs `airflow dags test clean_product_data` on the
real API, Redis, store and a Celery worker that logs jobs to a real MLflow server
(tests/integration/conftest.py).

Airflow keeps its metadata in SQLite under a temporary AIRFLOW_HOME, migrated once for the
module; the tests read DAG runs, task instances, triggers and XComs from that database,
and jobs from the service. `dags test` runs the trigger in its own process ("in line"),
so the deferral is real: the task defers, the trigger long-polls the service, the task
resumes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import serving
from tests.integration.conftest import Pair, pair, wait_held
from tests.support.hold import held
from tests.support.services import ROOT, MlflowServer, Stack, stop, unavailable

INTEGRATION = ROOT / "integrations" / "airflow"
AIRFLOW = INTEGRATION / ".venv" / "bin" / "airflow"
DAG_ID = "clean_product_data"
TASK_ID = "clean"
TRIGGER = "cleaning_service.CleaningJobTrigger"
COMMAND_TIMEOUT = 240  # a hung Airflow fails its test instead of hanging the session
T = TypeVar("T")
# One API key per test: `GET /jobs` lists a key's own jobs, and idempotency keys are per key.
KEYS = {name: secrets.token_hex(16) for name in ("upload", "source", "failed")}


@dataclass
class DagRun:
    """One finished `airflow dags test`: exit code, output, the run's state and XComs."""

    returncode: int
    output: str
    state: str | None
    xcom: dict[str, Any]
    tries: int | None  # the task's try number: 1 when it never retried


@dataclass
class Running:
    proc: subprocess.Popen
    log: Path


@dataclass
class Airflow:
    home: Path
    api: str  # the cleaning API's base URL

    @property
    def db(self) -> Path:
        return self.home / "airflow.db"

    def env(self, key: str | None = None) -> dict[str, str]:
        """Airflow's settings, apart from the service's environment (no PYTHONPATH, no
        root venv: the `airflow` script runs its own interpreter)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("AIRFLOW")
        }
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(INTEGRATION / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(INTEGRATION / "plugins"),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.db}",
        )
        if key is not None:
            conn = {"conn_type": "http", "host": self.api, "password": KEYS[key]}
            env["AIRFLOW_CONN_CLEANING_API"] = json.dumps(conn)
        return env

    def start(self, *args: str, key: str | None = None) -> Running:
        log = self.home / f"{args[0]}-{len(list(self.home.glob('*.out')))}.out"
        proc = subprocess.Popen(
            [str(AIRFLOW), *args],
            env=self.env(key),
            cwd=self.home,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() takes its children too
        )
        return Running(proc, log)

    def finish(self, running: Running) -> tuple[int, str]:
        try:
            running.proc.wait(COMMAND_TIMEOUT)
        finally:
            stop(running.proc)
        return running.proc.returncode, running.log.read_text(errors="replace")

    def start_dags_test(self, logical_date: str, conf: dict[str, Any], key: str) -> Running:
        return self.start("dags", "test", DAG_ID, logical_date, "--conf", json.dumps(conf), key=key)

    def dags_test(self, logical_date: str, conf: dict[str, Any], key: str) -> DagRun:
        return self.result(self.start_dags_test(logical_date, conf, key))

    def result(self, running: Running) -> DagRun:
        returncode, output = self.finish(running)
        return DagRun(returncode, output, *self.last_run())

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=30) as db:
            return db.execute(sql, args).fetchall()

    def last_run(self) -> tuple[str | None, dict[str, Any], int | None]:
        """The newest DAG run's state, its task's XComs and try number (`dags test` of a
        logical date replaces the run an earlier one left)."""
        runs = self.query(
            "SELECT id, run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
            DAG_ID,
        )
        if not runs:
            return None, {}, None
        run_pk, run_id, state = runs[0]
        rows = self.query(
            "SELECT key, value FROM xcom WHERE dag_run_id = ? AND task_id = ?", run_pk, TASK_ID
        )
        tries = self.query(
            "SELECT try_number FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            DAG_ID,
            run_id,
            TASK_ID,
        )
        return state, {k: json.loads(v) for k, v in rows}, tries[0][0] if tries else None

    def deferral(self, job_id: str) -> tuple[str, str, dict[str, Any]] | None:
        """The method the task resumes with and its trigger (classpath, kwargs), once the
        task has deferred to a trigger waiting for the job `job_id`."""
        rows = self.query(
            "SELECT ti.next_method, t.classpath, t.kwargs FROM task_instance ti"
            " JOIN trigger t ON t.id = ti.trigger_id WHERE ti.dag_id = ? AND ti.task_id = ?",
            DAG_ID,
            TASK_ID,
        )
        for method, classpath, kwargs in rows:
            if json.loads(kwargs).get("job_id") == job_id:
                return method, classpath, json.loads(kwargs)
        return None


def until(check: Callable[[], T | None], what: str, running: Running) -> T:
    """`check()` once it is not None (or empty), while `airflow` runs: a state, not a time."""
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not (value := check()):
        if running.proc.poll() is not None:
            tail = running.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"airflow exited before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {COMMAND_TIMEOUT}s")
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def service_pair(stack: Stack, mlflow: MlflowServer) -> Iterator[Pair]:
    """An API with one named key per test and a worker of its own that logs jobs to MLflow,
    on the session's store."""
    env = {
        "API_KEYS": ",".join(f"airflow-{name}:{key}" for name, key in KEYS.items()),
        "MLFLOW_TRACKING_URI": serving(mlflow).url,
        "MLFLOW_EXPERIMENT": "airflow-test",
    }
    with pair(stack, "airflow", 7, **env) as p:
        yield p


@pytest.fixture(scope="module")
def service(service_pair: Pair) -> str:
    """The base URL of that API."""
    return str(service_pair.client.base_url).rstrip("/")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated AIRFLOW_HOME (checked before the service starts: a missing Airflow
    skips, or fails in CI, at once)."""
    if not AIRFLOW.exists():
        unavailable("Airflow", FileNotFoundError(f"{AIRFLOW} missing: run `make airflow`"))
    home = tmp_path_factory.mktemp("airflow")
    migrating = Airflow(home, api="")
    returncode, output = migrating.finish(migrating.start("db", "migrate"))
    assert returncode == 0, output[-3000:]
    return home


@pytest.fixture(scope="module")
def airflow(airflow_home: Path, service: str) -> Airflow:
    return Airflow(airflow_home, service)


def _client(service: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=service, headers={"X-API-Key": KEYS[key]}, timeout=30)


@pytest.fixture(scope="module")
def first_run(airflow: Airflow, sample_path: Path) -> DagRun:
    """The DAG uploading the real Rakuten sample, logical date 2024-03-01."""
    conf = {"input_path": str(sample_path), "options": {"lowercase": True}}
    return airflow.dags_test("2024-03-01", conf, key="upload")


def test_the_dag_cleans_the_sample_and_xcom_holds_the_report(
    first_run: DagRun, service: str, sample_path: Path
) -> None:
    assert first_run.returncode == 0, first_run.output[-3000:]
    assert first_run.state == "success"
    job_id = first_run.xcom["job_id"]
    with _client(service, "upload") as api:
        job = api.get(f"/jobs/{job_id}").json()
        result = api.get(first_run.xcom["result_url"])
    assert job["status"] == "succeeded", job
    assert job["owner"] == "airflow-upload" and job["input_name"] == "rakuten_sample.csv"
    assert job["options"]["lowercase"] is True
    assert job["report"]["rows_in"] == job["report"]["rows_out"] == 672
    assert first_run.xcom["report"] == job["report"]
    assert first_run.xcom["result_url"] == f"{service}/jobs/{job_id}/result"
    assert first_run.xcom["return_value"]["id"] == job_id
    # This service logs jobs to MLflow: the task waited for the run and pushed its id.
    assert job["mlflow_status"] == "logged", job
    assert first_run.xcom["mlflow_run_id"] == job["mlflow_run_id"]
    assert result.status_code == 200
    header = next(csv.reader(sample_path.open(encoding="utf-8")))
    assert next(csv.reader(io.StringIO(result.text))) == header


def test_a_second_run_of_the_same_logical_date_reuses_the_job(
    airflow: Airflow, first_run: DagRun, sample_path: Path, service: str
) -> None:
    conf = {"input_path": str(sample_path), "options": {"lowercase": True}}
    again = airflow.dags_test("2024-03-01", conf, key="upload")

    assert again.returncode == 0, again.output[-3000:]
    assert again.state == "success" and again.tries == 1
    assert again.xcom["job_id"] == first_run.xcom["job_id"]
    assert again.xcom["report"] == first_run.xcom["report"]
    with _client(service, "upload") as api:
        jobs = api.get("/jobs").json()["items"]
    assert [j["id"] for j in jobs] == [first_run.xcom["job_id"]]


def test_a_failed_job_fails_the_task_with_the_services_message(
    airflow: Airflow, sample_path: Path, service: str, tmp_path: Path
) -> None:
    bad = tmp_path / "X_gzipped.csv"  # the real sample, gzipped: bytes no CSV reader takes
    bad.write_bytes(gzip.compress(sample_path.read_bytes(), mtime=0))
    run = airflow.dags_test("2024-03-03", {"input_path": str(bad)}, key="failed")

    assert run.returncode != 0
    assert run.state == "failed" and run.tries == 1  # failed at once: no retry of a failed job
    with _client(service, "failed") as api:
        job = api.get(f"/jobs/{run.xcom['job_id']}").json()
    assert job["status"] == "failed" and "binary" in job["error"], job
    assert job["error"] in run.output
    assert "report" not in run.xcom and "result_url" not in run.xcom


def test_the_task_waits_deferred_while_the_job_runs(
    airflow: Airflow, stack: Stack, sample_path: Path, service: str, service_pair: Pair
) -> None:
    """A `source` the service reads itself, into Parquet, held in flight
    (tests/support/hold.py): the job cannot end before the task has deferred, so the task
    waits in the trigger, not in a worker slot, and resumes once the job is done."""
    shutil.copy(sample_path, stack.data_dir / "raw" / "airflow_X.csv")
    conf = {
        "source": "raw/airflow_X.csv",
        "options": {"chunk_rows": 200},
        "output_format": "parquet",
    }
    with held(service_pair.hold) as hold, _client(service, "source") as api:
        running = airflow.start_dags_test("2024-03-02", conf, key="source")
        try:
            job_id = until(lambda: api.get("/jobs").json()["items"], "a job", running)[0]["id"]
            wait_held(api, job_id, hold)
            deferral = until(lambda: airflow.deferral(job_id), "the task's deferral", running)
            still = api.get(f"/jobs/{job_id}").json()
        except BaseException:
            stop(running.proc)
            raise
    run = airflow.result(running)  # the hold is gone: the job ends, the trigger fires

    method, classpath, kwargs = deferral
    assert (method, classpath) == ("execute_complete", TRIGGER)
    assert KEYS["source"] not in json.dumps(kwargs)  # the trigger reads it from the connection
    assert still["status"] == "running"  # the task deferred while the job was running
    assert run.returncode == 0, run.output[-3000:]
    assert run.state == "success" and run.xcom["job_id"] == job_id
    with _client(service, "source") as api:
        job = api.get(f"/jobs/{job_id}").json()
        result = api.get(run.xcom["result_url"])
    assert job["status"] == "succeeded" and job["output_format"] == "parquet", job
    assert job["input_name"] == "airflow_X.csv"
    assert run.xcom["report"] == job["report"] and job["report"]["rows_out"] == 672
    assert result.content[:4] == b"PAR1"
