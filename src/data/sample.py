"""A small before/after sample of what cleaning changed, for people to read.

Taken from the first rows of the input, cleaned again with the run's options: cleaning a
value depends on that value alone, so the sample shows exactly what the run did to those
rows. The HTML page is a plain table written here (escaped with `html.escape`): a
template engine would be one more dependency for one table.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

from src.data.formats import input_format
from src.data.frame import RunState, clean_text
from src.data.io import iter_csv, iter_jsonl, iter_parquet
from src.data.options import CleaningOptions

FIELDS = ("row", "id", "column", "before", "after")


@dataclass(frozen=True)
class Change:
    row: int  # 1-based, in input order
    id: str  # the row's id_column value ('' without one)
    column: str
    before: str
    after: str


def changed_values(
    source: Path, options: CleaningOptions, limit: int = 20, scan_rows: int = 2_000
) -> list[Change]:
    """Up to `limit` changed values among the first `scan_rows` rows of `source`."""
    scan = options.model_copy(update={"chunk_rows": scan_rows})
    reader = {"parquet": iter_parquet, "jsonl": iter_jsonl}.get(input_format(source), iter_csv)
    chunks = reader(source, scan, {})
    try:
        first = next(iter(chunks), None)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    if first is None:
        return []
    raw = first[0].head(scan_rows)
    cleaned = clean_text(raw, options, RunState())
    ids = raw.get_column(options.id_column) if options.id_column in raw.columns else None
    changes: list[Change] = []
    for index in range(raw.height):
        for name in options.text_columns:
            before = raw.get_column(name)[index] or ""
            after = cleaned.get_column(name)[index] or ""
            if before != after:
                row_id = "" if ids is None or ids[index] is None else str(ids[index])
                changes.append(Change(index + 1, row_id, name, before, after))
                if len(changes) >= limit:
                    return changes
    return changes


def to_csv(changes: list[Change]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    writer.writerows((c.row, c.id, c.column, c.before, c.after) for c in changes)
    return out.getvalue()


def to_html(changes: list[Change], title: str) -> str:
    """A page a person reads in a browser (MLflow shows it in the run's artifacts)."""
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>" for v in (c.row, c.id, c.column, c.before, c.after)
        )
        + "</tr>"
        for c in changes
    )
    head = "".join(f"<th>{f}</th>" for f in FIELDS)
    empty = "" if changes else "<p>Nothing changed in the first rows.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: .4rem; vertical-align: top; text-align: left; }}
td:nth-child(4) {{ background: #fff4f4; }} td:nth-child(5) {{ background: #f3fff3; }}
td:nth-child(4), td:nth-child(5) {{ max-width: 40rem; overflow-wrap: anywhere; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Values changed by cleaning among the first rows of the input: before, then after.</p>
{empty}<table><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""
