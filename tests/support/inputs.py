"""Test inputs shared by the tests and the benchmarks: the real sample, tiled.

The sample alone is one small chunk; repeating it gives inputs long enough to be
split into parts, cancelled or killed mid-run, with known duplicates.
"""

from __future__ import annotations

from pathlib import Path

from src.data.options import CleaningOptions
from src.jobs.model import new_job_id
from src.jobs.records import JobDoc, new_job_doc

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "rakuten_sample.csv"
# Small chunks: a job reports progress many times, so it can be caught in flight.
OPTIONS = CleaningOptions(chunk_rows=300)


def make_input(target: Path, times: int = 15) -> Path:
    """The sample's rows `times` over under its one header line, written to `target`."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    with target.open("w", encoding="utf-8") as fh:
        fh.write(lines[0])
        for _ in range(times):
            fh.writelines(lines[1:])
    return target


def job_doc(job_id: str | None = None, input_relpath: str = "none.csv") -> JobDoc:
    """A queued job's document, for tests that put records in the store themselves."""
    job_id = job_id or new_job_id()
    return new_job_doc(
        job_id=job_id,
        input_relpath=input_relpath,
        input_name=Path(input_relpath).name,
        options={},
        output_format="csv",
        retention_hours=1,
    )
