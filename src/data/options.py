"""Cleaning options: one pydantic model shared by the CLI, the API and the worker.

This module must stay free of pandas so the API (and its image) can validate
options without importing the engine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Encoding = Literal["auto", "utf-8", "cp1252", "latin-1"]


class CleaningOptions(BaseModel):
    """How to clean a product dataset; the defaults are the Rakuten product-text profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_columns: list[str] = Field(
        default=["designation", "description"],
        min_length=1,
        description="Columns holding product text to clean; each must exist in the input.",
    )
    strip_html: bool = Field(
        default=True, description="Turn HTML into text (block tags become separators)."
    )
    unescape_entities: bool = Field(
        default=True, description="Decode HTML entities, including double-escaped ones."
    )
    fix_mojibake: bool = Field(
        default=True,
        description="Repair broken encodings with ftfy (only values that look broken).",
    )
    repair_lossy: bool = Field(
        default=True,
        description="Repair the lossy '¿' where the answer is certain (elisions, œ, accents).",
    )
    lowercase: bool = Field(default=False, description="Lowercase the cleaned text.")
    min_length: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description="Cleaned values shorter than this become empty strings (and are counted).",
    )
    drop_duplicates: bool = Field(
        default=False,
        description="Drop rows whose cleaned values (all columns but the unnamed index) repeat.",
    )
    id_column: str = Field(
        default="productid", description="Column whose repeated values are reported."
    )
    neutralise_formulas: bool = Field(
        default=True,
        description="Prefix text cells starting with = + - @ with a quote in CSV output "
        "(spreadsheet formula injection).",
    )
    encoding: Encoding = Field(
        default="auto",
        description="Input text encoding; 'auto' reads UTF-8 (with or without BOM) "
        "and falls back to cp1252.",
    )
    chunk_rows: int = Field(
        default=5_000, ge=1, le=1_000_000, description="Rows read, cleaned and written at a time."
    )

    @field_validator("text_columns")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("text_columns must not repeat a column")
        if any(not name for name in value):
            raise ValueError("text_columns must not hold an empty name")
        return value
