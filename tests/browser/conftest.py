"""A real headless Chromium (Debian's, /usr/bin/chromium) driven by Playwright.

Playwright (a dev dependency) never downloads a browser here: it launches the system
one. A missing Chromium or service skips these tests on a developer machine, but
fails them when CI=true (as the integration tests do): `make services` installs both.

Every page is opened in an `offline_context`: each request is recorded, any to a host
other than 127.0.0.1 is aborted (and fails the test in `Traffic.assert_offline`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Response,
    Route,
    ViewportSize,
    sync_playwright,
)

from tests.support.services import ServiceUnavailable, Stack, running_stack, unavailable

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
LOCAL_HOST = "127.0.0.1"
# Chromium's console line for a load the page's Content-Security-Policy refused (never
# sent at all): only other hosts' URLs.
CSP_REFUSED = re.compile(
    r"^Loading the \w+ 'https?://(?!127\.0\.0\.1[:/])[^']+' violates .*Content Security Policy"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "browser" in item.path.parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)


@dataclass
class Traffic:
    """Every request a browser context made (those to other hosts aborted), and what
    went wrong in its pages."""

    urls: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, source URL)
    http_errors: list[tuple[int, str]] = field(default_factory=list)  # (status, URL)

    def outside(self) -> list[str]:
        """Requests to other hosts that reached the network layer (aborted here)."""
        return [u for u in self.urls if not on_host(u)]

    def assert_offline(
        self,
        *,
        allow_refused: bool = False,
        allowed_paths: Collection[str] = (),
        allowed_console: Collection[re.Pattern[str]] = (),
    ) -> None:
        """Nothing left the host, nothing failed in the pages, no request was refused.
        What a page is known to do, harmlessly, is tolerated by name: `allow_refused`, its
        Content-Security-Policy refused loads from other hosts; `allowed_paths`, requests
        (on this host) that may fail, and the console lines they cause; `allowed_console`,
        console lines matching one of these patterns."""
        assert self.outside() == [], "requests left the host"
        assert self.page_errors == [], "uncaught errors in the page"
        failed = [(s, u) for s, u in self.http_errors if urlsplit(u).path not in allowed_paths]
        assert failed == [], "requests the server refused"
        tolerated = [*allowed_console, *([CSP_REFUSED] if allow_refused else [])]
        unexpected = [
            (text, url)
            for text, url in self.console_errors
            if urlsplit(url).path not in allowed_paths
            and not any(pattern.search(text) for pattern in tolerated)
        ]
        assert unexpected == [], "errors in the browser console"


def on_host(url: str) -> bool:
    parts = urlsplit(url)
    # data: and blob: URLs are made in the page itself (MLflow previews artifacts from
    # blobs); nothing goes on the network.
    return parts.scheme in ("data", "blob") or parts.hostname == LOCAL_HOST


@contextlib.contextmanager
def offline_context(
    browser: Browser, viewport: ViewportSize, timeout_ms: float
) -> Iterator[tuple[BrowserContext, Traffic]]:
    """A fresh context (a fresh profile) whose requests to other hosts are aborted, and
    the `Traffic` its pages make."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(timeout_ms)
    traffic = Traffic()

    def only_this_host(route: Route, request: Request) -> None:
        traffic.urls.append(request.url)
        if on_host(request.url):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    def failed(response: Response) -> None:
        if response.status >= 400:
            traffic.http_errors.append((response.status, response.url))

    context.route("**/*", only_this_host)

    def watch(page: Page) -> None:
        page.on("pageerror", lambda e: traffic.page_errors.append(str(e)))
        page.on("response", failed)
        page.on(
            "console",
            lambda m: (
                traffic.console_errors.append((m.text, m.location.get("url", "")))
                if m.type == "error"
                else None
            ),
        )

    context.on("page", watch)
    try:
        yield context, traffic
    finally:
        context.close()


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
