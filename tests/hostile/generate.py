"""The hostile-input corpus, generated (no committed binaries).

Each case says how it is sent and what must come back: a 4xx at submission,
or a job that ends `failed` with a readable message, or — for inputs that are
odd but legitimate — a job that succeeds with the right output.

    uv run python -m tests.hostile.generate OUT_DIR   # write the files to look at them
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HEADER = ",designation,description,productid,imageid\n"


def _rows(n: int) -> str:
    return "".join(f"{i},Produit {i},<p>Desc {i}</p>,{1000 + i},{2000 + i}\n" for i in range(n))


@dataclass(frozen=True)
class Case:
    name: str
    body: Callable[[], bytes] | None = None  # the file, for uploads
    filename: str = "input.csv"
    options: str | None = None  # the `options` form field, as sent
    json_body: dict | None = None  # a JSON submission instead of an upload
    raw: tuple[str, bytes] | None = None  # (content-type, body) sent as is
    status: int = 202  # expected at submission
    detail: str = ""  # words expected in the 4xx detail
    outcome: str | None = None  # "failed" or "succeeded" once the job ends
    error: str = ""  # words expected in the job's error
    check: Callable[[bytes], bool] | None = field(default=None, compare=False)


def _binary() -> bytes:
    rng = random.Random(7)
    return bytes(rng.randrange(256) for _ in range(200_000))


def _wide() -> bytes:
    names = ",".join(f"c{i}" for i in range(9_998))
    return f"designation,description,{names}\n".encode() + b"a,b" + b",x" * 9_998 + b"\n"


def _ragged() -> bytes:
    rng = random.Random(3)
    lines = [HEADER]
    for i in range(200):
        lines.append(",".join(["v"] * rng.choice([1, 5, 5, 5, 40])) + "\n")
        lines[-1] = f"{i}," + lines[-1]
    return "".join(lines).encode()


CASES: list[Case] = [
    Case("zero-bytes", lambda: b"", outcome="failed", error="input is empty"),
    Case("binary", _binary, outcome="failed", error="binary"),
    Case(
        "nul-bytes",
        lambda: (HEADER + "1,a\x00b,c,1,1\n").encode(),
        outcome="failed",
        error="NUL byte",
    ),
    Case(
        "truncated-quote",
        lambda: (HEADER + _rows(50) + '51,"unterminated,desc,1,1\n').encode(),
        outcome="failed",
        error="unterminated",
    ),
    Case(
        "line-50mb",
        lambda: (HEADER + "1,a,").encode() + b"x" * (50 << 20) + b",1,1\n",
        outcome="failed",
        error="longer than",
    ),
    Case("10000-columns", _wide, outcome="failed", error="too many columns"),
    Case(
        "duplicated-header",
        lambda: b",designation,description,designation\n1,a,b,c\n",
        outcome="failed",
        error="duplicated column names",
    ),
    Case(
        "missing-columns",
        lambda: b"title,price\nChaise,10\n",
        outcome="failed",
        error="missing expected column(s): designation, description",
    ),
    Case("no-header", lambda: _rows(3).encode(), outcome="failed", error="missing expected column"),
    Case("ragged-widths", _ragged, outcome="failed", error="ragged row"),
    Case(
        "gzip-as-csv",
        lambda: gzip.compress(b"designation,description\n" + b"a,b\n" * 10**6),
        outcome="failed",
        error="binary",
    ),
    Case(
        "gzip-upload",
        lambda: gzip.compress(b"x" * 10**6),
        filename="input.csv.gz",
        status=415,
        detail=".gz",
    ),
    Case("spreadsheet", lambda: b"PK\x03\x04", filename="input.xlsx", status=415, detail=".xlsx"),
    Case("no-extension", lambda: HEADER.encode(), filename="input", status=415, detail="(none)"),
    Case(
        "corrupt-parquet",
        lambda: b"PAR1 not really",
        filename="input.parquet",
        outcome="failed",
        error="not a readable Parquet file",
    ),
    Case(
        "forced-utf8-on-cp1252",
        lambda: (HEADER + "1,Été,Cœur,1,1\n").encode("cp1252"),
        options='{"encoding": "utf-8"}',
        outcome="failed",
        error="not valid utf-8",
    ),
    Case(
        "text-column-absent",
        lambda: (HEADER + _rows(2)).encode(),
        options='{"text_columns": ["titre"]}',
        outcome="failed",
        error="missing expected column(s): titre",
    ),
    Case(
        "malformed-options",
        lambda: HEADER.encode(),
        options="{lowercase: yes",
        status=422,
        detail="invalid options",
    ),
    Case(
        "unknown-option",
        lambda: HEADER.encode(),
        options='{"fast": true}',
        status=422,
        detail="fast",
    ),
    Case(
        "option-wrong-type",
        lambda: HEADER.encode(),
        options='{"chunk_rows": "many"}',
        status=422,
        detail="chunk_rows",
    ),
    Case(
        "option-out-of-range",
        lambda: HEADER.encode(),
        options='{"chunk_rows": 0}',
        status=422,
        detail="chunk_rows",
    ),
    Case(
        "wrong-content-type",
        raw=("text/plain", b"designation\nx\n"),
        status=415,
        detail="multipart/form-data",
    ),
    Case(
        "json-not-object", raw=("application/json", b"[1, 2]"), status=422, detail="invalid request"
    ),
    Case("source-traversal", json_body={"source": "../../etc/passwd"}, status=400, detail="'..'"),
    Case(
        "source-absolute", json_body={"source": "/etc/passwd"}, status=400, detail="relative path"
    ),
    Case(
        "source-symlink-out",
        json_body={"source": "raw/link-out"},
        status=400,
        detail="leaves DATA_DIR",
    ),
    Case("source-directory", json_body={"source": "raw"}, status=404, detail="not found"),
    Case(
        "oversized-upload",
        lambda: (HEADER + "1,a,").encode() + b"y" * (70 << 20) + b",1,1\n",
        status=413,
        detail="MAX_UPLOAD_MB",
    ),
    # Odd but legitimate: cleaned, not refused.
    Case(
        "cp1252-undeclared",
        lambda: (HEADER + "1,Cœur d'été,Très bien,1,1\n").encode("cp1252"),
        outcome="succeeded",
        check=lambda out: "Cœur d'été" in out.decode(),
    ),
    Case(
        "mixed-newlines",
        lambda: (HEADER + "1,a,b,1,1\r\n2,c,d,2,2\n3,e,f,3,3\r4,g,h,4,4\n").encode(),
        outcome="succeeded",
        check=lambda out: out.decode().count("\n") == 5,
    ),
    Case(
        "formula-cells",
        lambda: (HEADER + '1,"=HYPERLINK(""http://x"",""y"")",@SUM(A1),1,1\n').encode(),
        outcome="succeeded",
        check=lambda out: b"'=HYPERLINK" in out and b"'@SUM" in out,
    ),
    Case(
        "nested-html-bomb",
        lambda: (
            HEADER + '1,a,"' + "<div>" * 200_000 + "x" + "</div>" * 200_000 + '",1,1\n'
        ).encode(),
        outcome="succeeded",
        check=lambda out: out.decode().splitlines()[1].split(",")[2] == "x",
    ),
    Case(
        "bidi-spoof",
        lambda: (HEADER + "1,evil\u202etxt.exe,b,1,1\n").encode(),
        outcome="succeeded",
        check=lambda out: "\u202e" not in out.decode(),
    ),
    Case(
        "header-only",
        lambda: HEADER.encode(),
        outcome="succeeded",
        check=lambda out: out.decode().count("\n") == 1,
    ),
]


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for case in CASES:
        if case.body is not None:
            (out / f"{case.name}-{case.filename}").write_bytes(case.body())
        index[case.name] = {"status": case.status, "outcome": case.outcome, "options": case.options}
    (out / "index.json").write_text(json.dumps(index, indent=2))
    print(f"{len(CASES)} cases written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
