"""The engine's input and output on polars alone: CSV blocks (and the csv module where
polars cannot follow), Parquet parts, JSON Lines as text, duplicate hashes; and a run of
the whole engine in a process where pandas, pyarrow and numpy cannot be imported."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from src.data import csv_blocks
from src.data.frame import SeenHashes, neutralise_rows
from src.data.io import InputError, iter_csv, iter_csv_range, iter_jsonl
from src.data.options import CleaningOptions
from src.data.pipeline import clean_file
from src.data.writer import AtomicWriter

ROOT = Path(__file__).resolve().parents[2]
HEADER = ",designation,description,productid,imageid\n"
COLUMNS = ["", "designation", "description", "productid", "imageid"]


def read_all(path: Path, **options: object) -> list[tuple[str, ...]]:
    chunks = iter_csv(path, CleaningOptions(**options), {})  # type: ignore[arg-type]
    return [row for frame, _ in chunks for row in frame.iter_rows()]


def python_rows(text: str) -> list[tuple[str, ...]]:
    """What Python's csv module reads (blank lines skipped): the reference."""
    return [tuple(r) for r in csv.reader(io.StringIO(text, newline="")) if r][1:]


def random_csv(rng: random.Random, rows: int) -> str:
    values = ["", "plain", "a,b", 'say ""hi""', "two\nlines", "crlf\r\ninside", "é ü", "=1+2"]
    lines = [HEADER]
    for i in range(rows):
        fields = [str(i)]
        for _ in range(4):
            v = rng.choice(values)
            quote = any(c in v for c in ',"\n\r') or rng.random() < 0.1
            fields.append(f'"{v}"' if quote else v)
        lines.append(",".join(fields) + rng.choice(["\n", "\r\n"]))
    return "".join(lines)


@pytest.mark.parametrize("block", [64, 1000, 1 << 20])
def test_csv_blocks_read_like_the_csv_module(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quoted commas, quotes and line ends inside values, CRLF; whatever the block size."""
    monkeypatch.setattr(csv_blocks, "BLOCK_BYTES", block)
    text = random_csv(random.Random(block), 400)
    source = tmp_path / "in.csv"
    source.write_text(text, encoding="utf-8")
    assert read_all(source, chunk_rows=37) == python_rows(text)


@pytest.mark.parametrize(
    "body",
    [
        '0,a 15" screen,b,1,2\n1,c,d,3,4\n',  # a stray quote: text, as in a spreadsheet
        '0,"closed"then more,b,1,2\n1,c,d,3,4\n',
        "\n0,a,b,1,2\n\n\r\n1,c,d,3,4\n\n",  # blank lines are skipped
        "0,a,b,1,2\r1,c,d,3,4\r",  # old Mac line ends
        "0,a,b,1,2\n1,c,d,3,4",  # no final line end
    ],
    ids=["stray-quote", "text-after-quote", "blank-lines", "bare-cr", "no-final-newline"],
)
def test_csv_that_polars_cannot_take_is_read_leniently(tmp_path: Path, body: str) -> None:
    source = tmp_path / "in.csv"
    rows = "0,x,y,1,2\n" * 3000  # more than a block of its own
    text = HEADER + rows + body + (rows if body.endswith(("\n", "\r")) else "")
    source.write_text(text, encoding="utf-8")
    assert read_all(source) == python_rows(text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("2,a\n", "ragged row: expected 5 fields, got 2 (row begins '2,a')"),
        ("2,a,b,1,1,extra\n", "ragged row: expected 5 fields, got 6"),
        ('2,a,"b,1,1\n', "a quoted field may be unterminated"),
        ("2,a," + "x" * (5 << 20) + ",1,1\n", "a row is longer than the 2 MB limit"),
        ('2,a,"' + "x\n" * (2 << 20) + '",1,1\n', "a row is longer than the 2 MB limit"),
    ],
    ids=["short", "long", "unterminated", "long-line", "long-quoted-field"],
)
@pytest.mark.parametrize("where", ["first", "middle"])
def test_malformed_csv_is_named(tmp_path: Path, body: str, message: str, where: str) -> None:
    source = tmp_path / "in.csv"
    rows = "0,x,y,1,2\n" * 50_000
    before = rows if where == "middle" else ""  # a block's first row sets polars' width
    source.write_text(HEADER + before + body + rows, encoding="utf-8")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_all(source)


def test_encodings_are_transcoded(tmp_path: Path) -> None:
    text = HEADER + "1,café œuvre,« x »,1,1\n" * 50_000
    source = tmp_path / "in.csv"
    source.write_bytes(text.encode("cp1252"))
    assert read_all(source) == python_rows(text)
    assert read_all(source, encoding="latin-1")[0][1] == "café \x9cuvre"
    source.write_bytes(text.encode("cp1252") + b"2,\x81,x,1,1\n")  # undefined in cp1252
    with pytest.raises(InputError, match="not valid cp1252 text; use encoding 'latin-1'"):
        read_all(source)


def test_empty_fields_are_empty_text(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(HEADER + '1,"",,,\n', encoding="utf-8")
    frame = next(iter_csv(source, CleaningOptions(), {}))[0]
    assert frame.schema == dict.fromkeys(COLUMNS, pl.String)
    assert frame.row(0) == ("1", "", "", "", "")


def test_csv_range_reads_whole_records_without_header(tmp_path: Path) -> None:
    text = random_csv(random.Random(3), 300)
    source = tmp_path / "in.csv"
    source.write_bytes(text.encode())
    data = text.encode()
    start = data.index(b"\n") + 1
    chunks = list(iter_csv_range(source, start, len(data), COLUMNS, "utf-8", CleaningOptions()))
    assert [r for f, _ in chunks for r in f.iter_rows()] == python_rows(text)
    assert chunks[-1][1] == len(data) - start  # bytes done count from the range's start


def test_progress_bytes_reach_the_file_size(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(HEADER + "0,x,y,1,2\n" * 600_000, encoding="utf-8")
    done = [d for _, d in iter_csv(source, CleaningOptions(), {})]
    assert done == sorted(done) and done[-1] == source.stat().st_size


JSON_LINES = (
    '{"designation": "a", "description": 1, "productid": 12345678901234567890, "f": 1.5, '
    '"b": true, "n": null, "o": {"k": [1, "x"]}, "l": [1, 2.0, null], "e": 1e20, '
    '"u": "é\\u0000"}\n'
    '{"designation": "b", "description": 2.25, "productid": "007", "b": false, '
    '"later": "m", "e": -0.0, "big": 1e400}\n'
    "\n"
    '{"designation": null, "description": "", "productid": 3}\n'
)


def test_json_lines_values_as_text(tmp_path: Path) -> None:
    """Pinned to what the pandas reader gave (but for ints among floats: "2", not "2.0")."""
    source = tmp_path / "in.jsonl"
    source.write_text(JSON_LINES, encoding="utf-8")
    [(frame, done)] = list(iter_jsonl(source, CleaningOptions(), {}))
    assert done == source.stat().st_size
    names = "designation description productid f b n o l e u later big"
    assert frame.columns == names.split()
    first = ("a", "1", "12345678901234567890", "1.5", "True", "", "{'k': [1, 'x']}")
    assert frame.rows() == [
        (*first, "[1, 2.0, None]", "1e+20", "é\x00", "", ""),
        ("b", "2.25", "007", "", "False", "", "", "", "-0.0", "", "m", "inf"),
        ("", "", "3", "", "", "", "", "", "", "", "", ""),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"designation": "a", "description": "b"}\n{"designation": \n', "line 2"),
        ('{"designation": "a", "description": "b"}\n[1, 2]\n', "line 2 is a JSON list"),
        (
            '{"designation": "a", "description": "b"}\n{"designation": "a", "x": 1}\n',
            "line 2 has the key 'x'",
        ),
    ],
    ids=["malformed", "not-an-object", "key-after-first-chunk"],
)
def test_bad_json_lines_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=f"not valid JSON Lines: {message}"):
        list(iter_jsonl(source, CleaningOptions(chunk_rows=1), {}))


def test_parquet_output_in_parts_is_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src.data import writer as writer_module

    monkeypatch.setattr(writer_module, "PARQUET_PART_BYTES", 1)  # a part a chunk
    target = tmp_path / "out" / "o.parquet"
    writer = AtomicWriter(target, "parquet")
    frames = [pl.DataFrame({"a": [str(i), "x"], "b": ["y", None]}) for i in range(5)]
    for frame in frames:
        writer.write(frame)
    assert len(list(target.parent.iterdir())) == 6  # the temporary file and five parts
    writer.commit(["a", "b"])
    assert list(target.parent.iterdir()) == [target]
    assert pl.read_parquet(target).equals(pl.concat(frames))


def test_parquet_header_only_and_abort(tmp_path: Path) -> None:
    target = tmp_path / "o.parquet"
    writer = AtomicWriter(target, "parquet")
    writer.commit(["", "designation"])
    empty = pl.read_parquet(target)
    assert empty.columns == ["", "designation"] and empty.height == 0
    writer = AtomicWriter(tmp_path / "p.parquet", "parquet")
    writer.write(pl.DataFrame({"a": ["1"]}))
    writer.abort()
    assert list(tmp_path.iterdir()) == [target]


def test_parquet_round_trip_keeps_the_index_column(sample_path: Path, tmp_path: Path) -> None:
    clean_file(sample_path, tmp_path / "a.parquet")
    clean_file(tmp_path / "a.parquet", tmp_path / "b.csv")
    clean_file(sample_path, tmp_path / "c.csv")
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()


def test_corrupt_parquet_is_an_input_error(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    source.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        clean_file(source, tmp_path / "o.csv")
    assert list(tmp_path.iterdir()) == [source]


def test_seen_hashes_against_a_set() -> None:
    rng = random.Random(5)
    seen_set: set[int] = set()
    seen = SeenHashes()
    for _ in range(200):
        values = [rng.randrange(3000) for _ in range(rng.choice([0, 1, 7, 300]))]
        expected = []
        for v in values:
            expected.append(v in seen_set)
            seen_set.add(v)
        assert seen.seen_before(pl.Series(values, dtype=pl.UInt64)).to_list() == expected


def test_neutralise_rows_counts_cells() -> None:
    frame = pl.DataFrame({"a": ["=1", "x", "-5"], "b": ["@x", "+y", None], "n": [1, 2, 3]})
    out, per_row = neutralise_rows(frame)
    assert per_row.to_list() == [2, 1, 0]
    assert out.get_column("a").to_list() == ["'=1", "x", "-5"]


BLOCKED = textwrap.dedent(
    """
    import sys

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"pandas", "pyarrow", "numpy"}:
                raise ModuleNotFoundError(f"{name} is not installed in the worker image")
            return None

    sys.meta_path.insert(0, Blocked())

    from pathlib import Path
    from src.data.options import CleaningOptions
    from src.data.pipeline import clean_file

    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    options = CleaningOptions(drop_duplicates=True, neutralise_formulas=True, chunk_rows=100)
    clean_file(source, out / "a.csv", options)
    clean_file(source, out / "a.parquet", options)
    clean_file(out / "a.parquet", out / "b.csv", options)
    clean_file(out / "in.jsonl", out / "c.csv", options)
    print(sorted(m for m in sys.modules if m.split(".")[0] in {"pandas", "pyarrow", "numpy"}))
    """
)


def test_engine_runs_without_pandas_pyarrow_numpy(sample_path: Path, tmp_path: Path) -> None:
    """The worker image has none of them: an import of one in src.data fails here."""
    frame = pl.read_csv(sample_path, infer_schema=False).head(300)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in frame.iter_rows(named=True))
    )
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(sample_path), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()
