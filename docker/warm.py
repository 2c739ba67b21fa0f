"""Compile the bytecode of what an image's processes run, in the image's builder stage.

    env -u PYTHONDONTWRITEBYTECODE /app/.venv/bin/python warm.py api|worker|etl

The images run with PYTHONDONTWRITEBYTECODE (read-only roots): a module without its
`.pyc` is compiled again at every start, which a short `clean-data` run feels. Compiling
every module of the venv (uv's compile-bytecode) costs the worker image ~34 MB, half of
it for modules no process of it imports (pycryptodome's ciphers, wcwidth's tables,
dnspython, ...): over issue 15's 205 MB budget. So the builder imports here what the
image's processes import, and runs a small cleaning of every kind of text, and Python
writes the `.pyc` of exactly those; anything else still imports (from source).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

# Imported by the processes, but lazily (after start-up, or by the command line).
CELERY = [
    "celery.apps.beat",
    "celery.apps.worker",
    "celery.backends.redis",
    "celery.beat",
    "celery.bin.beat",
    "celery.bin.celery",
    "celery.bin.worker",
    "celery.concurrency.prefork",
    "celery.worker.consumer",
    "celery.worker.strategy",
    "kombu.transport.redis",
    "src.worker.healthcheck",
]
# A value of each kind the engine treats apart: HTML, entities, mojibake, the lossy '¿'.
ROWS = [
    "id,designation,description",
    '1,Tablette Ã©tanche,"<p>Pour l&#39;été&nbsp;: <b>résistant</b></p><br/>"',
    "2,C¿Ur De L'héritage,Anti-Poussi¿¿Re",
    "3,plain title,",
]


def clean_samples(work: Path) -> None:
    """A CSV cleaned into CSV and Parquet, read back from Parquet and JSON Lines."""
    from src.data.clean_data import run

    source = work / "sample.csv"
    source.write_text("\n".join(ROWS) + "\n", encoding="utf-8")
    (work / "sample.jsonl").write_text('{"designation": "a", "description": "b"}\n')
    for args in (
        ["--lowercase", str(source), "-o", str(work / "out.csv")],
        ["--format", "parquet", "--drop-duplicates", str(source), "-o", str(work / "out.parquet")],
        [str(work / "out.parquet"), "-o", str(work / "back.csv")],
        [str(work / "sample.jsonl"), "-o", str(work / "json.csv")],
    ):
        if code := run(["-q", *args]):
            raise SystemExit(f"warm-up cleaning failed ({code}): {args}")


def main(extra: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if extra == "api":
            import uvicorn

            uvicorn.Config("src.api.main:app", factory=False).load()
        elif extra == "worker":
            from src.worker.celery_app import app

            app.loader.import_default_modules()
            for name in CELERY:
                importlib.import_module(name)
            clean_samples(Path(tmp))
        elif extra == "etl":
            importlib.import_module("src.client.cli")
            clean_samples(Path(tmp))
        else:
            raise SystemExit(f"unknown extra {extra!r}: api, worker or etl")


if __name__ == "__main__":
    main(sys.argv[1])
