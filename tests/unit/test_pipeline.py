"""clean_file: streaming, formats, encodings, duplicates, and bad input that leaves nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from src.data.io import InputError
from src.data.options import CleaningOptions
from src.data.pipeline import Progress, clean_file

HEADER = b",designation,description,productid,imageid\n"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_sample(sample_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.csv"
    report = clean_file(sample_path, out)
    rows = read_rows(out)
    assert report.rows_in == report.rows_out == len(rows) == 672
    assert list(rows[0]) == ["", "designation", "description", "productid", "imageid"]
    desc = report.columns["description"]
    assert desc.html_stripped == 119
    assert desc.lossy_repaired > 100
    assert not any("<li>" in r["description"] or "&#39;" in r["description"] for r in rows)
    # row 85110: U+009C (cp1252 'œ' read as latin-1) repaired by ftfy
    row = next(r for r in rows if r[""] == "85110")
    assert "Les œuvres" in row["description"] and "\x9c" not in row["description"]
    json.loads(report.model_dump_json())  # the report is JSON


def test_chunking_does_not_change_the_result(sample_path: Path, tmp_path: Path) -> None:
    whole = clean_file(sample_path, tmp_path / "a.csv", CleaningOptions(drop_duplicates=True))
    small = clean_file(
        sample_path, tmp_path / "b.csv", CleaningOptions(drop_duplicates=True, chunk_rows=7)
    )
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert whole.columns == small.columns


def test_rfc4180_quoting_and_bom(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(
        b"\xef\xbb\xbf"
        + HEADER
        + b'1,"Chaise, bois","<p>ligne 1\nligne 2</p> dit ""oui""",10,20\r\n'
        + b"2,Table,,11,21\n"
    )
    out = tmp_path / "out.csv"
    report = clean_file(src, out)
    rows = read_rows(out)
    assert report.encoding == "utf-8"
    assert [r["designation"] for r in rows] == ["Chaise, bois", "Table"]
    assert rows[0]["description"] == 'ligne 1 ligne 2 dit "oui"'
    assert next(iter(rows[0])) == ""  # the BOM is not part of the first column name


def test_cp1252_is_detected(tmp_path: Path) -> None:
    src = tmp_path / "win.csv"
    src.write_bytes(HEADER + "1,Cœur d'été,Très bien,1,2\n".encode("cp1252"))
    report = clean_file(src, tmp_path / "out.csv")
    assert report.encoding == "cp1252"
    assert read_rows(tmp_path / "out.csv")[0]["designation"] == "Cœur d'été"


def test_parquet_output_and_input(sample_path: Path, tmp_path: Path) -> None:
    pq_out = tmp_path / "clean.parquet"
    clean_file(sample_path, pq_out, fmt="parquet")
    frame = pl.read_parquet(pq_out)
    assert frame.height == 672
    again = clean_file(pq_out, tmp_path / "again.csv")
    assert again.rows_out == 672
    assert again.columns["description"].values_changed == 0  # cleaning is idempotent


def test_duplicates(tmp_path: Path) -> None:
    src = tmp_path / "dup.csv"
    src.write_bytes(
        HEADER
        + b"1,A,<b>x</b>,100,1\n"
        + b"2,A,x,100,1\n"  # same row once cleaned (index column ignored)
        + b"3,B,y,100,2\n"  # same productid, other row
        + b"4,C,z,200,3\n"
    )
    report = clean_file(
        src, tmp_path / "o.csv", CleaningOptions(drop_duplicates=True, chunk_rows=2)
    )
    assert report.rows_in == 4
    assert report.rows_out == 3
    assert report.duplicate_rows_dropped == 1
    assert report.duplicate_ids == 2
    assert report.duplicate_id_examples == ["100"]
    kept = clean_file(src, tmp_path / "k.csv")
    assert kept.rows_out == 4


def test_formula_cells_are_neutralised(tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    src.write_bytes(HEADER + b'1,"=HYPERLINK(""http://x"")",-5,100,@SUM(A1)\n')
    clean_file(src, tmp_path / "o.csv")
    row = read_rows(tmp_path / "o.csv")[0]
    assert row["designation"] == '\'=HYPERLINK("http://x")'
    assert row["imageid"] == "'@SUM(A1)"
    assert row["description"] == "-5"  # a number is not a formula
    clean_file(src, tmp_path / "raw.csv", CleaningOptions(neutralise_formulas=False))
    assert read_rows(tmp_path / "raw.csv")[0]["designation"].startswith("=")


def test_header_only(tmp_path: Path) -> None:
    src = tmp_path / "h.csv"
    src.write_bytes(HEADER)
    report = clean_file(src, tmp_path / "o.csv")
    assert report.rows_out == 0
    with (tmp_path / "o.csv").open(newline="") as fh:
        assert list(csv.reader(fh)) == [["", "designation", "description", "productid", "imageid"]]


BAD_INPUTS = {
    "empty": (b"", "input is empty"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    "not csv": (b'{"designation": "x", "description": "y"}\n', "missing expected column"),
    "missing column": (b"designation,productid\nA,1\n", "missing expected column(s): description"),
    "undecodable": (
        HEADER + b"1,ok,ok,1,1\n" * 100_000 + b"2,caf\xe9,x,1,1\n",
        "not valid utf-8",
    ),
    "ragged long": (HEADER + b"1,a,b,1,1\n2,a,b,1,1,extra\n", "ragged row"),
    "ragged short": (HEADER + b"1,a,b,1,1\n2,a\n", "ragged row"),
    "unterminated quote": (HEADER + b'1,a,"b,1,1\n2,a,b,1,1\n', "ragged row"),
    "duplicated header": (b",designation,description,designation\n1,a,b,c\n", "duplicated column"),
    "no header": (b"1,a,b,1,1\n", "missing expected column"),
    "too many columns": (
        b"designation,description," + b",".join(b"c%d" % i for i in range(2000)) + b"\n",
        "too many columns: 2,002",
    ),
}


@pytest.mark.parametrize(("content", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_named_and_leaves_nothing(
    tmp_path: Path, content: bytes, message: str
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    out_dir = tmp_path / "out"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clean_file(src, out_dir / "o.csv", CleaningOptions(chunk_rows=1000))
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        clean_file(tmp_path / "nope.csv", tmp_path / "o.csv")


def test_cancel_from_progress_leaves_nothing(sample_path: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []

    class Stop(Exception):
        pass

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if p.rows_done >= 200:
            raise Stop

    with pytest.raises(Stop):
        clean_file(
            sample_path,
            tmp_path / "o.csv",
            CleaningOptions(chunk_rows=100),
            on_progress=on_progress,
        )
    assert [p.rows_done for p in seen] == [100, 200]
    assert list(tmp_path.iterdir()) == []


def test_json_lines_input(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"designation": "<b>Chaise</b> &eacute;t&eacute;", "description": "l\\u00bfencre", '
        '"productid": 1}\n{"designation": "Table", "description": null, "productid": 2}\n',
        encoding="utf-8",
    )
    report = clean_file(src, tmp_path / "o.csv", CleaningOptions(chunk_rows=1))
    assert report.input_format == "jsonl" and report.rows_out == 2
    rows = read_rows(tmp_path / "o.csv")
    assert [(r["designation"], r["description"], r["productid"]) for r in rows] == [
        ("Chaise été", "l'encre", "1"),
        ("Table", "", "2"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"designation": "a"\nnot json\n', "not valid JSON Lines"),
        ('{"title": "a"}\n', "missing expected column"),
    ],
    ids=["malformed", "columns"],
)
def test_bad_json_lines(tmp_path: Path, content: str, message: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    with pytest.raises(InputError, match=message):
        clean_file(src, tmp_path / "out" / "o.csv")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
