"""The guide-style cleaning script: what `clean-data` is measured against, as a whole process.

Per value of the two text columns, the guide's recipe: BeautifulSoup's
``get_text(" ")`` with ``html.parser``, ``html.unescape``, whitespace collapsed,
lowercase. pandas reads and writes the CSV. `benchmarks/bench_clean.py --whole-process`
runs it in its own process against the installed `clean-data --lowercase`.

    uv run python benchmarks/guide_baseline.py INPUT.csv OUTPUT.csv
"""

from __future__ import annotations

import html
import sys
import warnings

import pandas as pd
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

TEXT_COLUMNS = ("designation", "description")


def clean(text: str) -> str:
    text = BeautifulSoup(text, "html.parser").get_text(" ")
    text = html.unescape(text)
    text = " ".join(text.split())
    return text.lower()


def main(source: str, target: str) -> None:
    # Values such as "1234.jpg" make bs4 warn that they look like file names.
    warnings.filterwarnings("ignore", category=MarkupResemblesLocatorWarning)
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].map(clean)
    frame.to_csv(target, index=False)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} INPUT.csv OUTPUT.csv")
    main(sys.argv[1], sys.argv[2])
