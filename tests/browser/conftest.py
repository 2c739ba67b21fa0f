"""A real headless Chromium (Debian's, /usr/bin/chromium) driven by Playwright.

Playwright (a dev dependency) never downloads a browser here: it launches the system
one. A missing Chromium or service skips these tests on a developer machine, but
fails them when CI=true (as the integration tests do): `make services` installs both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.services import ServiceUnavailable, Stack, running_stack

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet: no background requests of its own (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "browser" in item.path.parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)


def unavailable(what: str, exc: Exception | str) -> NoReturn:
    """Skip on a developer machine; fail in CI, where every tool must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} unavailable in CI: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        with running_stack(tmp_path_factory.mktemp("browser-stack")) as s:
            yield s
    except ServiceUnavailable as exc:
        unavailable("integration services", exc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        unavailable("Chromium", f"{CHROMIUM} is missing (make services: apt-get install chromium)")
    with sync_playwright() as pw:
        # Playwright gives each launch a fresh profile (a temporary --user-data-dir).
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
