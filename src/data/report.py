"""The cleaning report: what was read, what changed, how fast. Free of pandas."""

from __future__ import annotations

from pydantic import BaseModel, Field

from src.data.options import CleaningOptions


class ColumnReport(BaseModel):
    """What cleaning did to one text column."""

    values: int = 0
    values_changed: int = 0
    html_stripped: int = Field(0, description="Values that held HTML tags.")
    entities_unescaped: int = Field(0, description="Values changed by entity decoding.")
    mojibake_fixed: int = Field(0, description="Values repaired by ftfy.")
    lossy_repaired: int = Field(0, description="'¿' characters repaired with certainty.")
    lossy_remaining: int = Field(0, description="'¿' characters left: no certain repair.")
    emptied: int = Field(0, description="Non-empty values that cleaned to ''.")
    empty: int = Field(0, description="Empty values in the output.")
    chars_before: int = 0
    chars_after: int = 0
    mean_length_before: float = 0.0
    mean_length_after: float = 0.0


class CleaningReport(BaseModel):
    """The JSON report of one cleaning run."""

    input: str | None = None
    output: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    encoding: str | None = Field(None, description="The input encoding used (detected or chosen).")
    rows_in: int = 0
    rows_out: int = 0
    duplicate_rows_dropped: int = 0
    duplicate_ids: int = Field(0, description="Rows whose id (options.id_column) was seen before.")
    duplicate_id_examples: list[str] = Field(default_factory=list, max_length=20)
    formulas_neutralised: int = 0
    columns: dict[str, ColumnReport] = Field(default_factory=dict)
    duration_s: float = 0.0
    rows_per_s: float = 0.0
    options: CleaningOptions = Field(default_factory=CleaningOptions)

    def summary(self) -> str:
        """A few readable lines for a terminal."""
        lines = [
            f"rows: {self.rows_in:,} in, {self.rows_out:,} out "
            f"({self.duplicate_rows_dropped:,} duplicate rows dropped) "
            f"in {self.duration_s:.2f}s ({self.rows_per_s:,.0f} rows/s)",
            f"duplicate {self.options.id_column}: {self.duplicate_ids:,}"
            + (
                f" (e.g. {', '.join(self.duplicate_id_examples[:3])})" if self.duplicate_ids else ""
            ),
        ]
        for name, c in self.columns.items():
            lines.append(
                f"{name}: {c.values_changed:,} changed, {c.html_stripped:,} html, "
                f"{c.entities_unescaped:,} entities, {c.mojibake_fixed:,} mojibake, "
                f"¿ {c.lossy_repaired:,} repaired / {c.lossy_remaining:,} left, "
                f"{c.empty:,} empty ({c.emptied:,} emptied), "
                f"mean length {c.mean_length_before:.0f} → {c.mean_length_after:.0f}"
            )
        if self.formulas_neutralised:
            lines.append(f"formula cells neutralised: {self.formulas_neutralised:,}")
        return "\n".join(lines)
