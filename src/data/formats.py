"""File formats, defined once: what may come in, what may go out, by file suffix.

Imports nothing but the standard library, so the API and the CLI's argument parser
can use it without loading the engine.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal, get_args

InputFormat = Literal["csv", "parquet", "jsonl"]
OutputFormat = Literal["csv", "parquet"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
DEFAULT_OUTPUT: OutputFormat = "csv"

# Accepted input suffixes, and the one a stored copy of such a file gets.
INPUT_SUFFIXES: dict[str, str] = {
    ".csv": ".csv",
    ".txt": ".csv",
    ".parquet": ".parquet",
    ".pq": ".parquet",
    ".jsonl": ".jsonl",
    ".ndjson": ".jsonl",
}
MEDIA_TYPES: dict[OutputFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def input_format(path: PurePath) -> InputFormat:
    """'parquet', 'jsonl' or else 'csv' (the common case, sniffed later), by suffix."""
    stored = INPUT_SUFFIXES.get(path.suffix.lower(), ".csv")
    return "parquet" if stored == ".parquet" else "jsonl" if stored == ".jsonl" else "csv"


def output_format(path: PurePath, requested: OutputFormat | None = None) -> OutputFormat:
    """The requested format, else Parquet for a .parquet/.pq target, else CSV."""
    if requested:
        return requested
    return "parquet" if input_format(path) == "parquet" else DEFAULT_OUTPUT
