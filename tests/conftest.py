"""Shared fixtures: the real Rakuten sample."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "rakuten_sample.csv"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE
