"""Where job files live under DATA_DIR, and which user-named sources are allowed."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

JOBS_DIR = "jobs"


class SourceError(ValueError):
    """A `source` path that is not a readable file inside DATA_DIR."""


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / JOBS_DIR / job_id


def input_path(data_dir: Path, job_id: str, suffix: str) -> Path:
    return job_dir(data_dir, job_id) / f"input{suffix}"


def result_relpath(job_id: str, fmt: str) -> str:
    return f"{JOBS_DIR}/{job_id}/result.{fmt}"


def remove_partial_results(data_dir: Path, job_id: str) -> None:
    """Temp files left by a worker killed mid-write (the rename never happened)."""
    for tmp in job_dir(data_dir, job_id).glob(".result.*.tmp"):
        tmp.unlink(missing_ok=True)


def remove_job_files(data_dir: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)


def resolve_source(data_dir: Path, source: str) -> Path:
    """The file `source` names under DATA_DIR; refuses absolute paths, '..' and escaping links."""
    pure = PurePosixPath(source)
    if not source or pure.is_absolute() or "\\" in source:
        raise SourceError("source must be a relative path under DATA_DIR")
    if ".." in pure.parts:
        raise SourceError("source must not contain '..'")
    root = data_dir.resolve()
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        raise SourceError("source leaves DATA_DIR (through a symbolic link)")
    if not target.is_file():
        raise FileNotFoundError(f"source not found under DATA_DIR: {source}")
    return target
