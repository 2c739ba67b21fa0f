"""Shared fixtures: the real Rakuten sample, and one MLflow server for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import MlflowServer, ServiceUnavailable, unavailable

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "rakuten_sample.csv"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server's address, one for the integration and browser tests
    (its first start takes tens of seconds); `serving(mlflow)` starts it, so a test can
    also use the address while nothing listens there."""
    try:
        server = MlflowServer.at_free_port(tmp_path_factory.mktemp("mlflow"))
    except ServiceUnavailable as exc:
        unavailable("MLflow", exc)
    try:
        yield server
    finally:
        server.stop()


def serving(server: MlflowServer) -> MlflowServer:
    try:
        return server.wait()
    except ServiceUnavailable as exc:
        unavailable("MLflow", exc)
