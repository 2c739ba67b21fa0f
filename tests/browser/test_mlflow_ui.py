"""A job's MLflow run as a person sees it: MLflow's own UI, in a real browser, offline.

A real `mlflow server` (SQLite, local artifacts), the real stack with a worker and the
API logging to it, the real sample uploaded through the API, and Debian's headless
Chromium opening the job's `mlflow_run_url`: the run page (name, status, owner, params,
metrics, tags), its datasets (input and output, with their sha256), and its artifacts
(the report, and the before/after sample rendered as a page). Every request the UI makes
is recorded; any to a host other than 127.0.0.1 is aborted and fails the test.

WRITE_DOCS=1 writes the screenshots README.md shows (docs/mlflow-run.png,
docs/mlflow-sample.png); otherwise they go to a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, ViewportSize, expect

from src.data.options import CleaningOptions
from tests.browser.conftest import Traffic, offline_context
from tests.conftest import SAMPLE, serving
from tests.support.services import ROOT, MlflowServer, Stack, stop

KEY = "mlflow-ui-key"
OWNER = "mlops-team"
EXPERIMENT = "data-cleaning"  # MLFLOW_EXPERIMENT's default: what a deployment shows
RUN_NAME = f"clean {SAMPLE.name}"
OUTPUT = f"{SAMPLE.stem}.cleaned.csv"
INPUT_SHA256 = hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
DIGEST_CHARS = 32  # MLflow shows a prefix of a digest; the full sha256 is in the profile
VIEWPORT: ViewportSize = {"width": 1400, "height": 1000}
# MLflow's UI is one large bundle: its first load takes seconds on a busy machine. Every
# wait is on a page state, never a fixed sleep.
TIMEOUT_MS = 60_000
# Known and harmless, in MLflow 3's UI without its auth app: it asks who is signed in
# (404 here), and Chromium reports a ResizeObserver that deferred a notification.
WHO_AM_I = "/ajax-api/2.0/mlflow/users/current"
RESIZE_OBSERVER = re.compile(r"ResizeObserver loop (completed|limit exceeded)")


def assert_offline(traffic: Traffic) -> None:
    """Nothing left the host and nothing failed, but for what MLflow's UI is known to do."""
    traffic.assert_offline(allowed_paths={WHO_AM_I}, allowed_console=[RESIZE_OBSERVER])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def patient_expect() -> Iterator[None]:
    """expect() gives up after 5 s by default: MLflow's UI may need longer."""
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=None)


@pytest.fixture(scope="module")
def api(stack: Stack, mlflow: MlflowServer) -> Iterator[str]:
    """A worker (with the sweep, which retries a logging that failed) and the API, both
    logging to the session's `mlflow` (started here); the API's base URL."""
    url = serving(mlflow).url
    env = {
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_UI_URL": url,
        "API_KEYS": f"{OWNER}:{KEY}",
    }
    worker = stack.start_worker("mlflow-ui", concurrency=1, beat=True, **env)
    try:
        proc, base = stack.start_api(**env)
        try:
            yield base
        finally:
            stop(proc)
    finally:
        stop(worker)


@pytest.fixture(scope="module")
def job(api: str) -> dict:
    """The real sample, cleaned through the API and logged to MLflow."""
    with httpx.Client(base_url=api, headers={"X-API-Key": KEY}, timeout=30) as client:
        with SAMPLE.open("rb") as fh:
            r = client.post("/jobs/clean", files={"file": (SAMPLE.name, fh, "text/csv")})
        assert r.status_code == 202, r.text
        job = _wait_logged(client, r.json()["id"])
        job["result_sha256"] = sha256(client.get(job["result_url"]).raise_for_status().content)
    return job


def _wait_logged(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    """Until the job is over and its tracking too (logged, or failed for good)."""
    deadline = time.monotonic() + timeout
    while True:
        # ?wait= long-polls until the job ends; tracking follows the end: poll it.
        job = client.get(f"/jobs/{job_id}", params={"wait": 5}).raise_for_status().json()
        if job["mlflow_status"] in ("logged", "failed"):
            assert job["status"] == "succeeded", json.dumps(job, indent=1)
            assert job["mlflow_status"] == "logged", job["mlflow_error"]
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not tracked: {json.dumps(job, indent=1)}")
        time.sleep(0.2)


@pytest.fixture
def context(browser: Browser) -> Iterator[tuple[BrowserContext, Traffic]]:
    """A fresh profile (MLflow's UI keeps its choices in localStorage)."""
    with offline_context(browser, VIEWPORT, TIMEOUT_MS) as ct:
        yield ct


def _shot(name: str, tmp_path: Path) -> Path:
    return ROOT / "docs" / name if os.environ.get("WRITE_DOCS") == "1" else tmp_path / name


def open_run(page: Page, job: dict) -> None:
    """What a person does with the job's link on a first visit: open it, close the
    assistant MLflow opens on a first load, choose the "Model training" view (a cleaning
    run feeds training, it is no GenAI evaluation): MLflow lists the experiment's runs,
    where the job's run is; open it."""
    run_url = job["mlflow_run_url"]
    heading = page.get_by_role("heading", name=RUN_NAME)
    page.goto(run_url)
    expect(heading).to_be_visible()
    close = page.get_by_role("button", name="Close", exact=True)
    close.click()
    expect(close).to_have_count(0)
    page.get_by_role("button", name="Model training", exact=True).click()
    listed = page.get_by_role("link", name=RUN_NAME)
    expect(listed).to_have_count(1)
    listed.click()
    expect(page).to_have_url(run_url)
    expect(heading).to_be_visible()


def _dataset(name: str, sha: str) -> re.Pattern[str]:
    """How MLflow shows a dataset: its name (ours end with the job), then its digest."""
    return re.compile(rf"{re.escape(name)}.* \({sha[:DIGEST_CHARS]}\)")


def _row(page: Page, name: str) -> Locator:
    """A params or metrics table's row, found by its first cell's text."""
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))


def test_run_page_shows_the_job_status_params_metrics_and_datasets(
    context: tuple[BrowserContext, Traffic], job: dict, tmp_path: Path
) -> None:
    ctx, traffic = context
    page = ctx.new_page()
    open_run(page, job)

    expect(page.get_by_role("link", name=EXPERIMENT, exact=True).first).to_be_visible()
    expect(page.get_by_text("Finished", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=OWNER, exact=True)).to_be_visible()  # Created by
    expect(page.get_by_text(job["mlflow_run_id"], exact=True)).to_be_visible()
    expect(page.get_by_text(f"cleaning.job_id: {job['id']}")).to_be_visible()

    # Params: every cleaning option, the output format and the engine's version.
    expect(
        page.get_by_text(f"Parameters ({len(CleaningOptions.model_fields) + 2})")
    ).to_be_visible()
    expect(_row(page, "strip_html")).to_contain_text("true")
    expect(_row(page, "text_columns")).to_contain_text("designation,description")
    expect(_row(page, "output_format")).to_contain_text("csv")
    # Metrics: the report's counts, per column too.
    report = job["report"]
    expect(_row(page, "rows_in")).to_contain_text(str(report["rows_in"]))
    expect(_row(page, "rows_out")).to_contain_text(str(report["rows_out"]))
    stripped = report["columns"]["description"]["html_stripped"]
    assert stripped > 0  # the real rows hold HTML
    expect(_row(page, "description.html_stripped")).to_contain_text(str(stripped))

    # Datasets: the input, named with its digest; the output behind "+1".
    shown = page.get_by_role("button").filter(has_text=_dataset(SAMPLE.name, INPUT_SHA256))
    expect(shown).to_contain_text("input", ignore_case=True)
    _screenshot_overview(page, _shot("mlflow-run.png", tmp_path))

    page.get_by_role("button").filter(has_text=re.compile(r"^\+1$")).click()
    more = page.get_by_role("dialog")
    expect(more).to_contain_text(_dataset(OUTPUT, job["result_sha256"]))
    expect(more).to_contain_text("output", ignore_case=True)
    page.keyboard.press("Escape")
    expect(more).to_have_count(0)

    assert_offline(traffic)


def _screenshot_overview(page: Page, path: Path) -> None:
    """The whole overview. MLflow scrolls it inside the page: the viewport grows to hold
    it all, and the picture ends below its last box (the parameters)."""
    # A loading bar stands for "Child runs" until MLflow has found there are none.
    expect(page.get_by_text("Child runs", exact=True)).to_have_count(0)
    hidden = page.evaluate(
        """() => Math.max(0, ...[...document.querySelectorAll('body *')]
            .filter(e => getComputedStyle(e).overflowY === 'auto')
            .map(e => e.scrollHeight - e.clientHeight))"""
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": VIEWPORT["height"] + hidden})
    # The pointer rests where the run's link was (now the metrics' search box): move it
    # to the empty foot of the page, out of the picture.
    page.mouse.move(VIEWPORT["width"] / 2, VIEWPORT["height"] + hidden - 10)
    last = _row(page, "engine_version")  # the parameters' last row
    expect(last).to_be_in_viewport(ratio=1)
    box = last.bounding_box()
    assert box is not None
    bottom = min(box["y"] + box["height"] + 40, VIEWPORT["height"] + hidden)
    page.screenshot(path=path, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom})
    page.set_viewport_size(VIEWPORT)


def test_dataset_details_give_input_and_output_with_their_sha256(
    context: tuple[BrowserContext, Traffic], job: dict, stack: Stack
) -> None:
    ctx, traffic = context
    page = ctx.new_page()
    open_run(page, job)

    page.get_by_role("button").filter(has_text=_dataset(SAMPLE.name, INPUT_SHA256)).click()
    drawer = page.get_by_role("dialog").filter(has_text="Data details for")
    expect(drawer).to_contain_text(RUN_NAME)
    expect(drawer).to_contain_text("2 datasets used")
    # The input, selected: its full sha256, rows, and where it is.
    expect(drawer).to_contain_text(f"sha256: {INPUT_SHA256}")
    expect(drawer).to_contain_text(f"rows: {job['report']['rows_in']}")
    expect(drawer).to_contain_text("Source type: Local")
    expect(drawer).to_contain_text(f"Path: {stack.data_dir}/jobs/{job['id']}/input.csv")

    # The output, the cleaned file a training run reads: the result the API serves.
    drawer.get_by_text(_dataset(OUTPUT, job["result_sha256"])).click()
    expect(drawer).to_contain_text(f"sha256: {job['result_sha256']}")
    expect(drawer).to_contain_text(f"rows: {job['report']['rows_out']}")
    expect(drawer).to_contain_text(f"Path: {stack.data_dir}/jobs/{job['id']}/result.csv")

    assert_offline(traffic)


def test_artifacts_hold_the_report_and_a_readable_sample(
    context: tuple[BrowserContext, Traffic], job: dict, tmp_path: Path
) -> None:
    ctx, traffic = context
    page = ctx.new_page()
    open_run(page, job)

    page.get_by_role("tab", name="Artifacts").click()
    expect(page).to_have_url(f"{job['mlflow_run_url']}/artifacts")
    page.get_by_text("report.json", exact=True).click()
    expect(page.get_by_text(f'"rows_in": {job["report"]["rows_in"]}')).to_be_visible()

    page.get_by_text("sample", exact=True).click()
    expect(page.get_by_text("changes.csv", exact=True)).to_be_visible()
    page.get_by_text("changes.html", exact=True).click()
    expect(page.get_by_text("sample/changes.html", exact=True)).to_be_visible()
    # MLflow previews the HTML in a frame: a page a person reads, the input's markup shown
    # as text before cleaning, and gone after.
    sample = page.frame_locator("iframe")
    expect(sample.get_by_role("heading", level=1)).to_have_text(
        f"What cleaning changed in {SAMPLE.name}"
    )
    expect(sample.locator("thead th")).to_have_text(["row", "id", "column", "before", "after"])
    marked_up = sample.locator("tbody tr").filter(
        has=sample.locator("td:nth-child(4)", has_text="<p>")
    )
    expect(marked_up.first).to_be_visible()
    expect(marked_up.first.locator("td:nth-child(5)")).not_to_contain_text("<p>")

    assert_offline(traffic)
    page.screenshot(path=_shot("mlflow-sample.png", tmp_path))
