"""Cutting a CSV at record starts, cleaning the parts, merging them: equal to one run."""

from __future__ import annotations

import csv
import io
import itertools
import random
from pathlib import Path

import polars as pl
import pytest

from src.data import part_merge, split
from src.data.frame import RunState
from src.data.io import SNIFF_BYTES, csv_head
from src.data.options import CleaningOptions
from src.data.part_merge import merge_parts
from src.data.pipeline import clean_file
from src.data.split import clean_part, plan_parts

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


def reference_plan(data: bytes, part_bytes: int) -> list[tuple[int, int]] | None:
    """plan_parts, byte by byte: the definition the block scan must agree with."""
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    quotes, cuts, target = 0, [], 0
    for i in range(start, len(data)):
        c = data[i : i + 1]
        if c == b'"':
            before = data[i - 1 : i] if i > start else b""
            after = data[i + 1 : i + 2]
            edges = (b"", b",", b"\r", b"\n", b'"')
            if (before if quotes % 2 == 0 else after) not in edges:
                return None
            quotes += 1
        elif c == b"\n" and quotes % 2 == 0 and i >= target:
            cuts.append(i + 1)
            target = i + 1 + part_bytes
    if quotes % 2 or not cuts:
        return None
    bounds = [c for c in cuts if c < len(data)] + [len(data)]
    ranges = [(s, e) for s, e in itertools.pairwise(bounds) if e > s]
    return ranges or None


@pytest.mark.parametrize("dense_quotes", [0, 64, 10**9], ids=["loop", "auto", "split"])
def test_block_scan_agrees_with_the_byte_by_byte_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dense_quotes: int
) -> None:
    """Random CSV-ish bytes, well and badly quoted, scanned in 7-byte blocks (so quotes,
    doubled quotes and CRLFs straddle block edges) by both scan paths."""
    monkeypatch.setattr(split, "SCAN_BYTES", 7)
    monkeypatch.setattr(split, "DENSE_QUOTES", dense_quotes)
    rng = random.Random(15)
    source = tmp_path / "fuzz.csv"
    cut = 0
    for case in range(1500):
        if case % 2:
            rows = []
            for _ in range(rng.randint(1, 6)):
                values = [
                    "".join(rng.choice('a,\n" \r') for _ in range(rng.randint(0, 5)))
                    for _ in range(3)
                ]
                rows.append(",".join(f'"{v.replace(chr(34), 2 * chr(34))}"' for v in values))
            body = "\n".join(rows).encode()
        else:
            body = b"".join(
                rng.choice([b"a", b",", b'"', b"\n", b"\r", b'""', b"x y"])
                for _ in range(rng.randint(0, 40))
            )
        data = (b"\xef\xbb\xbf" if case % 10 == 0 else b"") + b"h1,h2,h3\n" + body
        source.write_bytes(data)
        part_bytes = rng.randint(1, 20)
        plan = plan_parts(source, part_bytes)
        expected = reference_plan(data, part_bytes)
        assert (plan.ranges if plan else None) == expected, (data, part_bytes)
        cut += expected is not None
    assert cut > 500  # most well-quoted cases are cut, not all refused


def test_values_with_newlines_deduplicated_across_parts(tmp_path: Path) -> None:
    """Rows holding newlines (CSV lines of several text lines) dropped as duplicates:
    the merge finds each row's bytes by its quotes, not by its newlines."""
    source = tmp_path / "lines.csv"
    rows = [f'{i},"two\nlines {i % 4}","a ""q"", and\r\nmore",{i % 4},1\n' for i in range(60)]
    source.write_text(HEADER + "".join(rows), encoding="utf-8")
    merged = split_and_merge(
        source, tmp_path, CleaningOptions(drop_duplicates=True, min_length=0), 200
    )
    assert merged.count(b"two\nlines") < 60


def test_merging_part_by_part_from_rebuilt_state_equals_one_merge(
    sample_path: Path, tmp_path: Path
) -> None:
    """What a split job whose merger changes hands does: parts appended one step at a
    time at recorded offsets, the duplicate state rebuilt from the keys files of the
    parts already merged, and a half-written tail left by a dead merger overwritten."""
    lines = sample_path.read_text(encoding="utf-8").splitlines(keepends=True)
    source = tmp_path / "twice.csv"
    source.write_text(lines[0] + "".join(lines[1:]) * 2, encoding="utf-8")
    options = CleaningOptions(drop_duplicates=True)
    plan = plan_parts(source, 40_000)
    assert plan is not None and len(plan.ranges) >= 4
    header, encoding = csv_head(source.read_bytes()[:SNIFF_BYTES], options)
    parts = []
    for i, (start, end) in enumerate(plan.ranges):
        rows, keys = tmp_path / f"{i}.csv", tmp_path / f"{i}.keys.parquet"
        clean_part(source, start, end, header, encoding, options, "csv", rows, keys)
        parts.append((rows, keys))
    expected = tmp_path / "single.csv"
    report = clean_file(source, expected, options)

    target = tmp_path / "merged.csv"
    line = io.BytesIO()
    part_merge.empty_frame(header).write_csv(line)
    offset = len(line.getvalue())
    target.write_bytes(line.getvalue())
    for step, (rows, keys) in enumerate(parts):
        state = RunState()  # a new merger each step: its state rebuilt from the keys
        for _, earlier in parts[:step]:
            part_merge.judge_part(earlier, state, ids=False)
        with target.open("r+b") as fh:
            fh.seek(0, 2)
            fh.write(b"half a part from a merger that died\n")  # beyond the recorded offset
            fh.flush()
            runs = part_merge.judge_part(keys, state, rows, ids=False)
            offset = part_merge.append_part(fh.fileno(), offset, rows, runs)
            fh.truncate(offset)
    assert target.read_bytes() == expected.read_bytes()
    # Repeated ids, counted over all parts at the end, as one run counts them.
    part_merge.count_duplicate_ids([keys for _, keys in parts], state)
    assert report.duplicate_ids > 0
    assert state.duplicate_ids == report.duplicate_ids
    assert state.duplicate_id_examples == report.duplicate_id_examples
    assert state.duplicate_rows_dropped == report.duplicate_rows_dropped
    assert state.rows_out == report.rows_out
