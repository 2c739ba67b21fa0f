"""The clean-data command as a user runs it: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "src.data.clean_data", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"},
    )


def test_cleans_sample_with_report(sample_path: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "o.csv", tmp_path / "r.json"
    result = run(str(sample_path), "-o", str(out), "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert "672 in, 672 out" in result.stdout
    data = json.loads(report.read_text())
    assert data["rows_out"] == 672
    assert data["columns"]["description"]["html_stripped"] == 119


def test_options_reach_the_engine(sample_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    result = run(str(sample_path), "-o", str(out), "--lowercase", "--format", "parquet", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    import polars as pl

    titles = pl.read_parquet(out)["designation"].to_list()
    assert all(t == t.lower() for t in titles)


def test_directory_mode(sample_path: Path, tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(sample_path, raw / "X_test.csv")
    result = run("-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cleaned = tmp_path / "data" / "cleaned"
    assert sorted(p.name for p in cleaned.iterdir()) == ["X_test.csv", "X_test.report.json"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no such file"),
        (b"", "input is empty"),
        (b"\x00\x01\x02binary", "binary"),
        (b"a,b\n1,2\n", "missing expected column"),
        (b",designation,description\n1,a,b\n2,a,b,c\n", "ragged row"),
        (b",designation,description\n1,caf\xe9,b\n", None),  # cp1252 fallback: success
    ],
    ids=["missing", "empty", "binary", "columns", "ragged", "cp1252"],
)
def test_bad_input_one_line_no_output(tmp_path: Path, content: bytes | None, words) -> None:
    src = tmp_path / "in.csv"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out" / "o.csv"
    result = run(str(src), "-o", str(out))
    if words is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_forced_encoding_names_the_problem(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b",designation,description\n1,caf\xe9,b\n")
    result = run(str(src), "--encoding", "utf-8", "-o", str(tmp_path / "o.csv"))
    assert result.returncode == 1
    assert "not valid utf-8" in result.stderr and "cp1252" in result.stderr


def test_bad_option_is_a_usage_error(sample_path: Path) -> None:
    result = run(str(sample_path), "--min-length", "-1")
    assert result.returncode == 2
    assert "--min-length" in result.stderr


def test_help_lists_options() -> None:
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--lowercase", "--drop-duplicates", "--encoding", "--report", "--format"):
        assert flag in result.stdout
