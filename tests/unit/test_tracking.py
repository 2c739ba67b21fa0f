"""What a job's MLflow run holds, from pure code: params, metrics, the before/after sample.

The calls to MLflow itself are proven against a real server (tests/integration/test_mlflow.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

from src.core.mlflow_rest import Dataset
from src.core.storage import LocalStorage
from src.data import sample
from src.data.options import CleaningOptions
from src.data.pipeline import clean_file
from src.jobs import tracking
from src.jobs.model import JobStatus
from tests.support.inputs import job_doc


def finished_doc(status: JobStatus, report: dict | None = None, **fields: object) -> dict:
    doc = dict(job_doc(input_relpath="in/rakuten.csv"))
    doc.update(status=status, started_ts=doc["created_ts"] + 2, attempts=1, report=report)
    doc["finished_ts"] = doc["started_ts"] + 3.5
    doc.update(fields)
    return doc


def test_params_name_every_option_the_format_and_the_engine() -> None:
    doc = finished_doc(JobStatus.SUCCEEDED, options={"lowercase": True, "min_length": 3})
    params = tracking.params(doc)  # type: ignore[arg-type]
    assert set(params) == {*CleaningOptions.model_fields, "output_format", "engine_version"}
    assert params["lowercase"] == "true" and params["strip_html"] == "true"
    assert params["min_length"] == "3"
    assert params["text_columns"] == "designation,description"
    assert all(isinstance(v, str) and len(v) <= 6000 for v in params.values())


def test_metrics_are_the_report_counts_per_column(sample_path: Path, tmp_path: Path) -> None:
    report = clean_file(sample_path, tmp_path / "out.csv").model_dump(mode="json")
    report["columns"]["prix (€)"] = report["columns"]["designation"]  # a name MLflow refuses
    doc = finished_doc(JobStatus.SUCCEEDED, report, result_bytes=1234)
    found = tracking.metrics(doc, tracking.CleaningReport.model_validate(report))  # type: ignore[arg-type]
    assert found["rows_in"] == report["rows_in"] and found["rows_out"] == report["rows_out"]
    assert found["description.html_stripped"] == report["columns"]["description"]["html_stripped"]
    assert found["designation.mojibake_fixed"] == report["columns"]["designation"]["mojibake_fixed"]
    assert found["job_seconds"] == 3.5 and found["queue_seconds"] == 2.0
    assert found["result_bytes"] == 1234 and found["attempts"] == 1
    assert "prix ___.values_changed" in found  # only characters MLflow accepts


def test_a_failed_job_has_no_report_metrics_and_names_its_error() -> None:
    doc = finished_doc(JobStatus.FAILED, error="missing expected column(s): designation")
    assert "rows_in" not in tracking.metrics(doc, None)  # type: ignore[arg-type]
    tags = tracking.tags(doc)  # type: ignore[arg-type]
    assert tags["cleaning.error"] == "missing expected column(s): designation"
    assert tags["cleaning.status"] == "failed"
    assert tracking.RUN_STATUS[JobStatus.CANCELLED] == "KILLED"


def test_run_tags_name_the_owner_when_keys_are_named() -> None:
    doc = finished_doc(JobStatus.SUCCEEDED, owner="mlops-team")
    tags = tracking.run_tags(doc)  # type: ignore[arg-type]
    assert tags["cleaning.owner"] == tags["mlflow.user"] == "mlops-team"
    assert "cleaning.owner" not in tracking.run_tags(finished_doc(JobStatus.SUCCEEDED))  # type: ignore[arg-type]


def test_a_dataset_is_what_log_inputs_expects() -> None:
    found = Dataset("x.csv", "ab" * 16, "local", '{"uri": "/d/x.csv"}', "input", "{}").as_json()
    assert found["tags"] == [{"key": "mlflow.data.context", "value": "input"}]
    assert found["dataset"]["digest"] == "ab" * 16 and len(found["dataset"]["digest"]) <= 36


class CountingStorage(LocalStorage):
    """A data folder that counts the files read through it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: list[str] = []

    def iter_bytes(self, rel: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        self.read.append(rel)
        return super().iter_bytes(rel, chunk)


def test_lineage_hashes_an_upload_once_the_result_as_written(tmp_path: Path) -> None:
    """An upload's sha256, taken as it streamed in, is the job's: the input is not read
    again for it; a `source` (no such field) and the result are hashed from their bytes."""
    files = CountingStorage(tmp_path)
    for rel, data in {"in/rakuten.csv": b"a,b\n1,2\n", "out/result.csv": b"a,b\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    upload = hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    doc = finished_doc(JobStatus.SUCCEEDED, result="out/result.csv", input_sha256=upload)
    found = {d.context: json.loads(d.profile) for d in tracking.lineage(files, doc, None)}
    assert found["input"] == {"sha256": upload, "bytes": 8}
    assert found["output"] == {"sha256": hashlib.sha256(b"a,b\n").hexdigest(), "bytes": 4}
    assert files.read == ["out/result.csv"]
    del doc["input_sha256"]  # a `source` job
    found = {d.context: json.loads(d.profile) for d in tracking.lineage(files, doc, None)}
    assert found["input"] == {"sha256": upload, "bytes": 8}
    assert files.read == ["out/result.csv", "in/rakuten.csv", "out/result.csv"]


def test_sample_shows_changed_values_before_and_after(sample_path: Path) -> None:
    changes = sample.changed_values(sample_path, CleaningOptions(lowercase=True), limit=15)
    assert len(changes) == 15
    assert all(c.before != c.after and c.after == c.after.lower() for c in changes)
    assert any("<" in c.before and "<" not in c.after for c in changes)  # HTML stripped
    assert all(c.id.isdigit() for c in changes)  # productid
    rows = list(csv.DictReader(io.StringIO(sample.to_csv(changes))))
    assert [r["before"] for r in rows] == [c.before for c in changes]


def test_sample_page_escapes_what_it_shows() -> None:
    change = sample.Change(1, "7", "description", "<script>alert(1)</script>&amp;", "alert(1) &")
    page = sample.to_html([change], "What <b>changed</b>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "What &lt;b&gt;changed&lt;/b&gt;" in page
    assert "Nothing changed" in sample.to_html([], "t")


def test_sample_of_a_file_without_changes_is_empty(tmp_path: Path) -> None:
    clean = tmp_path / "clean.csv"
    clean.write_text("productid,designation,description\n1,Chaise,Une chaise en bois\n")
    assert sample.changed_values(clean, CleaningOptions()) == []
