"""Where a job's files are, as storage keys, and which user-named sources are allowed.

`jobs/<id>/input.<suffix>`, `jobs/<id>/result.<fmt>` and, for a split job,
`jobs/<id>/parts/<index>.<fmt>` (plus a keys file per part for a CSV result).
The storage backends only move blobs; this module decides the names.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from src.core.storage import OutsideStore, Storage
from src.data.formats import OutputFormat

JOBS_DIR = "jobs"
PARTS_DIR = "parts"


class SourceError(ValueError):
    """A `source` path that is not a readable file inside the storage."""


def job_prefix(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"not a job id: {job_id!r}")  # never the whole jobs/ folder
    return f"{JOBS_DIR}/{job_id}"


def input_relpath(job_id: str, suffix: str) -> str:
    return f"{job_prefix(job_id)}/input{suffix}"


def result_relpath(job_id: str, fmt: OutputFormat) -> str:
    return f"{job_prefix(job_id)}/result.{fmt}"


def parts_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}/{PARTS_DIR}"


def part_relpaths(job_id: str, index: int, fmt: OutputFormat) -> tuple[str, str | None]:
    """A cleaned part of a split job: its rows, and for a CSV result its keys file."""
    stem = f"{parts_prefix(job_id)}/{index:05d}"
    return f"{stem}.{fmt}", (f"{stem}.keys.parquet" if fmt == "csv" else None)


def check_relpath(source: str) -> PurePosixPath:
    """A relative key with no way out: no absolute path, no '..', no backslash."""
    pure = PurePosixPath(source)
    if not source or pure.is_absolute() or "\\" in source:
        raise SourceError("source must be a relative path under DATA_DIR")
    if "\x00" in source:
        raise SourceError("source must not contain a NUL character")
    if ".." in pure.parts:
        raise SourceError("source must not contain '..'")
    return pure


def resolve_source(files: Storage, source: str) -> str:
    """The key a user-named `source` stands for; SourceError or FileNotFoundError if none."""
    rel = str(check_relpath(source))
    try:
        return files.resolve(rel)
    except OutsideStore as exc:
        raise SourceError(f"source {exc}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"source not found {files.where}: {source}") from None
    except OSError as exc:  # a name too long, a loop of links
        reason = exc.strerror or type(exc).__name__
        raise SourceError(f"source cannot be read: {reason}") from None


def remove_job(files: Storage, job_id: str) -> None:
    """Every file of the job (input, parts, result)."""
    files.remove_tree(job_prefix(job_id))


def remove_parts(files: Storage, job_id: str) -> None:
    files.remove_tree(parts_prefix(job_id))


def discard_abandoned(files: Storage, job_id: str) -> None:
    """What a worker killed mid-write left of this job's result or parts."""
    files.discard_partial(job_prefix(job_id))
    files.discard_dead_scratch()
