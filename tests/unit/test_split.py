"""Cutting a CSV at record starts, cleaning the parts, merging them: equal to one run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import polars as pl
import pytest

from src.data.io import SNIFF_BYTES, csv_head
from src.data.options import CleaningOptions
from src.data.pipeline import clean_file
from src.data.split import clean_part, merge_parts, plan_parts

HEADER = ",designation,description,productid,imageid\n"


def records(plan_path: Path, part_bytes: int) -> list[bytes]:
    plan = plan_parts(plan_path, part_bytes)
    assert plan is not None
    data = plan_path.read_bytes()
    return [data[s:e] for s, e in plan.ranges]


def split_and_merge(
    source: Path, tmp: Path, options: CleaningOptions, part_bytes: int, fmt: str = "csv"
) -> bytes:
    plan = plan_parts(source, part_bytes)
    assert plan is not None
    header, encoding = csv_head(source.read_bytes()[:SNIFF_BYTES], options)
    paths, results = [], []
    for i, (start, end) in enumerate(plan.ranges):
        rows = tmp / "parts" / f"{i:05d}.{fmt}"
        keys = tmp / "parts" / f"{i:05d}.keys.parquet" if fmt == "csv" else None
        results.append(clean_part(source, start, end, header, encoding, options, fmt, rows, keys))
        paths.append((rows, keys))
    merged = tmp / f"merged.{fmt}"
    report = merge_parts(paths, results, merged, options, fmt, header=header)
    single = tmp / f"single.{fmt}"
    expected = clean_file(source, single, options, fmt=fmt)
    fields = (
        "rows_in",
        "rows_out",
        "duplicate_rows_dropped",
        "duplicate_ids",
        "duplicate_id_examples",
        "formulas_neutralised",
        "columns",
    )
    assert {k: getattr(report, k) for k in fields} == {k: getattr(expected, k) for k in fields}
    if fmt == "csv":
        assert merged.read_bytes() == single.read_bytes()
    else:  # the same table; Parquet row groups follow the chunks, so bytes may differ
        assert pl.read_parquet(merged).equals(pl.read_parquet(single))
    return merged.read_bytes()


def test_cuts_only_at_record_starts_never_inside_quotes(tmp_path: Path) -> None:
    source = tmp_path / "q.csv"
    rows = [
        HEADER,
        '0,"two\nlines","a ""quoted"" word, and a comma",1,2\n',
        '1,plain,"<p>html\r\nwith CRLF</p>",3,4\n',
        '2,"","""starts with a quote",5,6\n',
        "3,last,no newline at the end,7,8",
    ]
    source.write_text("".join(rows), encoding="utf-8")
    assert [r.decode() for r in records(source, 1)] == rows[1:]
    # Bigger parts group whole records; together they cover everything after the header.
    assert b"".join(records(source, 60)) == "".join(rows[1:]).encode()


def test_header_with_bom_and_quoted_names(tmp_path: Path) -> None:
    source = tmp_path / "bom.csv"
    source.write_bytes(b'\xef\xbb\xbf"",designation,description,productid,imageid\n0,a,b,1,2\n')
    assert records(source, 1) == [b"0,a,b,1,2\n"]


@pytest.mark.parametrize(
    "body",
    [
        '0,a 15" screen,b,1,2\n1,c,d,3,4\n',  # a stray quote inside an unquoted field
        '0,"never closed,b,1,2\n1,c,d,3,4\n',  # an unterminated quoted field
        '0,"closed"then more,b,1,2\n1,c,d,3,4\n',  # text after a closing quote
    ],
    ids=["stray-quote", "unterminated", "text-after-quote"],
)
def test_files_that_cannot_be_cut_safely_are_left_whole(tmp_path: Path, body: str) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(HEADER + body, encoding="utf-8")
    assert plan_parts(source, 1) is None


def test_header_only_file_has_no_parts(tmp_path: Path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text(HEADER, encoding="utf-8")
    assert plan_parts(source, 1) is None


def test_parts_cover_the_file_in_order_at_about_the_asked_size(
    sample_path: Path, tmp_path: Path
) -> None:
    plan = plan_parts(sample_path, 50_000)
    assert plan is not None
    size = sample_path.stat().st_size
    assert plan.ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(plan.ranges, plan.ranges[1:], strict=False))
    assert all(e - s >= 50_000 for s, e in plan.ranges[:-1])
    assert 5 <= len(plan.ranges) <= size // 50_000 + 1


@pytest.mark.parametrize("part_bytes", [1, 7_000, 100_000])
def test_merged_parts_equal_one_run_on_the_real_sample(
    sample_path: Path, tmp_path: Path, part_bytes: int
) -> None:
    split_and_merge(sample_path, tmp_path, CleaningOptions(), part_bytes)


def test_formula_cells_counted_and_guarded_as_in_one_run(tmp_path: Path) -> None:
    source = tmp_path / "formulas.csv"
    rows = [HEADER] + [f'{i},=SUM(A{i % 10}),"+{i % 10} cm",{i % 3},1\n' for i in range(40)]
    source.write_text("".join(rows), encoding="utf-8")
    options = CleaningOptions(drop_duplicates=True)
    merged = split_and_merge(source, tmp_path, options, 100).decode()
    assert "'=SUM(A1)" in merged


@pytest.mark.parametrize("options", [{}, {"drop_duplicates": True}], ids=["keep", "dedupe"])
def test_parquet_result_same_table_as_one_run(
    sample_path: Path, tmp_path: Path, options: dict
) -> None:
    lines = sample_path.read_text(encoding="utf-8").splitlines(keepends=True)
    source = tmp_path / "twice.csv"
    source.write_text(lines[0] + "".join(lines[1:]) * 2, encoding="utf-8")
    split_and_merge(source, tmp_path, CleaningOptions(**options), 30_000, fmt="parquet")


def test_duplicates_across_parts_dropped_as_in_one_run(sample_path: Path, tmp_path: Path) -> None:
    """The sample three times over: every repeat lies in a later part than its first."""
    lines = sample_path.read_text(encoding="utf-8").splitlines(keepends=True)
    source = tmp_path / "thrice.csv"
    source.write_text(lines[0] + "".join(lines[1:]) * 3, encoding="utf-8")
    options = CleaningOptions(drop_duplicates=True, lowercase=True)
    merged = split_and_merge(source, tmp_path, options, 40_000)
    assert len(list(csv.reader(io.StringIO(merged.decode())))) < 3 * 672


def test_windows_encoded_input(tmp_path: Path) -> None:
    source = tmp_path / "cp1252.csv"
    source.write_bytes(
        (HEADER + '0,Café crème,"<b>Déjà</b> vu",1,2\n1,Noël,été,3,4\n').encode("cp1252")
    )
    merged = split_and_merge(source, tmp_path, CleaningOptions(), 1).decode("utf-8")
    assert "0,Café crème,Déjà vu,1,2\n1,Noël,été,3,4\n" in merged
