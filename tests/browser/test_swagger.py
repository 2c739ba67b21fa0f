"""Swagger UI and ReDoc in a real browser, served by the real API, with nothing from outside.

The real stack (Redis, the store, one worker, the API with API_KEYS) and Debian's
headless Chromium. Every request the pages make is recorded, and any to a host
other than 127.0.0.1 is aborted and fails the test: the docs load only vendored
assets. The Swagger test then does what a person does: Authorize with a key, "Try
it out" on POST /jobs/clean with the real sample, Execute, and the job runs.

WRITE_DOCS=1 writes the screenshot README.md shows (docs/swagger.png); otherwise
it goes to a temporary folder, so a test run leaves the tree clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import Traffic, offline_context
from tests.conftest import SAMPLE
from tests.support.services import ROOT, Stack, stop

KEY = "browser-test-key"
TITLE = "Product-data cleaning service"
# Generous for a loaded CI machine; every wait is on a page state, never a fixed sleep.
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[subprocess.Popen]:
    proc = stack.start_worker("browser", concurrency=1)
    yield proc
    stop(proc)


@pytest.fixture(scope="module")
def base_url(stack: Stack, worker: subprocess.Popen) -> Iterator[str]:
    proc, base = stack.start_api(API_KEYS=KEY)
    yield base
    stop(proc)


@pytest.fixture
def context(browser: Browser) -> Iterator[tuple[BrowserContext, Traffic]]:
    with offline_context(browser, {"width": 1280, "height": 900}, TIMEOUT_MS) as ct:
        yield ct


def _operations(base_url: str) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the API's OpenAPI document, read now."""
    paths = httpx.get(f"{base_url}/openapi.json", timeout=10).raise_for_status().json()["paths"]
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(m.upper(), p) for p, item in paths.items() for m in item if m in methods}


def _open_swagger(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/docs")
    expect(page).to_have_title(f"{TITLE} - Swagger UI")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text(TITLE)
    expect(page.locator(".opblock").first).to_be_visible()


def _opblock(page: Page, method: str, path: str):
    """One operation's block, found by what it shows (not by its operationId)."""
    summary = page.locator(f'.opblock-summary-path[data-path="{path}"]')
    return page.locator(f".opblock.opblock-{method.lower()}").filter(has=summary)


def _no_resolver_errors(page: Page) -> None:
    expect(page.locator(".errors-wrapper")).to_have_count(0)
    expect(page.get_by_text("Resolver error", exact=False)).to_have_count(0)


def test_swagger_lists_every_operation_without_errors(
    context: tuple[BrowserContext, Traffic], base_url: str
) -> None:
    ctx, traffic = context
    expected = _operations(base_url)
    page = ctx.new_page()
    _open_swagger(page, base_url)

    # Swagger UI renders the whole list at once, after the document loads.
    shown = {
        (method.strip().upper(), path)
        for method, path in page.locator(".opblock").evaluate_all(
            """blocks => blocks.map(b => [
                b.querySelector('.opblock-summary-method').textContent,
                b.querySelector('.opblock-summary-path').getAttribute('data-path'),
            ])"""
        )
    }
    assert shown == expected

    # Swagger UI resolves an operation's references when it is opened: open them all,
    # and wait until each shows its responses (rendered from the resolved operation).
    for method, path in sorted(expected):
        block = _opblock(page, method, path)
        block.locator(".opblock-summary-control").click()
        expect(block.locator(".responses-table tr.response").first).to_be_visible()
    _no_resolver_errors(page)
    # The X-API-Key scheme is offered by the Authorize button.
    expect(page.locator(".auth-wrapper .authorize")).to_be_visible()

    traffic.assert_offline()


def test_swagger_try_it_out_submits_the_sample(
    context: tuple[BrowserContext, Traffic], base_url: str, tmp_path: Path
) -> None:
    ctx, traffic = context
    page = ctx.new_page()
    _open_swagger(page, base_url)

    # Authorize: the key goes into the X-API-Key scheme's field.
    page.locator(".auth-wrapper .authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    expect(dialog).to_contain_text("X-API-Key")
    dialog.locator("input").first.fill(KEY)
    dialog.locator(".auth-btn-wrapper .authorize").click()
    expect(dialog.locator(".auth-btn-wrapper")).to_contain_text("Logout")
    dialog.locator(".btn-done").click()
    expect(dialog).to_have_count(0)

    submit = _opblock(page, "POST", "/jobs/clean")
    submit.locator(".opblock-summary-control").click()
    submit.locator(".try-out__btn").click()
    # The form field `file` (other fields may render file pickers too: pick by name).
    submit.locator('tr[data-property-name="file"] input[type=file]').set_input_files(SAMPLE)
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/jobs/clean" and r.request.method == "POST"
    ) as answer:
        submit.locator(".execute").click()
    response = answer.value
    assert response.request.header_value("x-api-key") == KEY  # the Authorize button's key
    assert response.status == 202, response.text()
    job_id = response.json()["id"]

    # What the page shows: the live response, 202, with the job.
    live = submit.locator(".live-responses-table tbody .response").first
    expect(live.locator(".response-col_status")).to_have_text("202")
    expect(live.locator(".response-col_description")).to_contain_text(job_id)
    _no_resolver_errors(page)

    # The job is real: a worker runs it to the end.
    job = _wait_succeeded(base_url, job_id)
    assert job["progress"]["rows_done"] > 0

    traffic.assert_offline()
    shot = ROOT / "docs" / "swagger.png" if os.environ.get("WRITE_DOCS") == "1" else None
    # The top of the page: the title, Authorize and the operations, submit open.
    page.screenshot(
        path=shot or tmp_path / "swagger.png",
        full_page=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": 1800},
    )


def _wait_succeeded(base_url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, headers={"X-API-Key": KEY}, timeout=30) as client:
        while True:
            # ?wait= long-polls: it answers when the job ends or the seconds pass.
            job = client.get(f"/jobs/{job_id}", params={"wait": 5}).raise_for_status().json()
            if job["status"] in {"succeeded", "failed", "cancelled"}:
                assert job["status"] == "succeeded", json.dumps(job, indent=1)
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not end: {job}")


def test_redoc_renders_offline(context: tuple[BrowserContext, Traffic], base_url: str) -> None:
    ctx, traffic = context
    paths = httpx.get(f"{base_url}/openapi.json", timeout=10).raise_for_status().json()["paths"]
    page = ctx.new_page()
    page.goto(f"{base_url}/redoc")
    expect(page).to_have_title(f"{TITLE} - ReDoc")
    expect(page.locator("h1").first).to_contain_text(TITLE)
    # Every operation has its section, headed by its summary.
    for (method, path), summary in _summaries(paths).items():
        heading = page.locator("h2").filter(has_text=summary).first
        expect(heading, f"{method} {path}").to_be_attached()
    expect(page.get_by_text("Something went wrong")).to_have_count(0)
    # ReDoc 2 hard-codes its vendor's logo (from a CDN) in the side menu: the page's
    # Content-Security-Policy refuses it, so the browser never sends that request.
    traffic.assert_offline(allow_refused=True)


def _summaries(paths: dict) -> dict[tuple[str, str], str]:
    """The heading ReDoc gives each operation: its summary (else its operationId)."""
    return {
        (method.upper(), path): op.get("summary") or op["operationId"]
        for path, item in paths.items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    }
