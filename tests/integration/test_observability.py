"""The dashboards and alerts, proven by a real Prometheus.

The API and a prefork worker run on real Redis and the store; a real Prometheus
(Debian's package) scrapes them with the production config (docker/prometheus/), its
DNS discovery swapped for the loopback ports, and loads the production rule files.
Jobs are queued before the worker starts (so the queue is seen full), then run, one of
them failing. Every PromQL expression of the dashboards and alert rules is then
evaluated through Prometheus' HTTP API: each must parse, and each dashboard query must
return data.

Grafana variables become concrete windows: `$__rate_interval` → 1m, `$__range` → 10m.

WRITE_DOCS=1 also redraws docs/dashboards/*.png from this run's data.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from celery import Celery
from pymongo import MongoClient

from tests.integration.conftest import TERMINAL, upload
from tests.support.hold import held
from tests.support.services import (
    ROOT,
    Prometheus,
    ServiceUnavailable,
    Stack,
    free_port,
    running_stack,
    stop,
    wait_for,
)

PROM_DIR = ROOT / "docker" / "prometheus"
GRAFANA_DIR = ROOT / "docker" / "grafana"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RATE_INTERVAL, RANGE = "1m", "10m"
GOOD_JOBS = 6
SAMPLE_ROWS = 672
MONGO_DB = "cleaning_observability"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plots = _script("plot_dashboards")


def _unavailable(exc: Exception) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"observability services unavailable in CI: {exc}")
    pytest.skip(str(exc))


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _unavailable(ServiceUnavailable(f"{name} is not installed (apt-get install prometheus)"))
    return str(path)


def prometheus_test_config(api_port: int, worker_port: int, prom_port: int) -> dict[str, Any]:
    """The production config, with loopback targets and 1 s scrapes."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    # Production finds the replicas of the compose services `api` and `ml-worker` by DNS.
    assert jobs["api"]["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]
    assert jobs["ml-worker"]["dns_sd_configs"] == [
        {"names": ["ml-worker"], "type": "A", "port": 9808, "refresh_interval": "15s"}
    ]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    test = copy.deepcopy(config)
    test["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    test["rule_files"] = [str(PROM_DIR / "rules" / "*.yml")]
    ports = {"api": api_port, "ml-worker": worker_port, "prometheus": prom_port}
    for scrape in test["scrape_configs"]:
        scrape.pop("dns_sd_configs", None)
        scrape["static_configs"] = [{"targets": [f"127.0.0.1:{ports[scrape['job_name']]}"]}]
    return test


@dataclass
class Observed:
    stack: Stack
    prom: Prometheus
    api: httpx.Client
    job_ids: list[str]
    failed_id: str
    start: float
    worker_pid: int
    worker_metrics: str
    # When every job was scraped: rate() windows end here, whatever later tests took.
    at: float = 0.0


def _dashboard_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard title, panel title, target) of every query of every dashboard."""
    return [
        (d["title"], p["title"], t)
        for d in plots.load_dashboards()
        for p in plots.panels(d)
        for t in p.get("targets", [])
    ]


def _alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _wait_scrapes(prom: Prometheus, job: str, count: int = 2) -> None:
    """Until Prometheus has scraped `job` `count` more times."""
    first = prom.value(f'timestamp(up{{job="{job}"}})') or 0
    wait_for(
        lambda: (prom.value(f'timestamp(up{{job="{job}"}})') or 0) >= first + count,
        30,
        f"{count} scrapes of {job}",
    )


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Iterator[Observed]:
    _binary("prometheus")
    workdir = tmp_path_factory.mktemp("observability")
    with contextlib.ExitStack() as cleanup:
        try:
            stack = cleanup.enter_context(running_stack(workdir, MONGO_DB=MONGO_DB))
        except ServiceUnavailable as exc:
            _unavailable(exc)
        start = time.time()
        api_proc, base = stack.start_api()
        cleanup.callback(stop, api_proc)
        api = cleanup.enter_context(httpx.Client(base_url=base, timeout=30))
        worker_port, prom_port = free_port(), free_port()
        config = workdir / "prometheus.yml"
        api_port = int(base.rsplit(":", 1)[1])
        config.write_text(yaml.safe_dump(prometheus_test_config(api_port, worker_port, prom_port)))
        prom = Prometheus.start(config, workdir / "prometheus", prom_port)
        cleanup.callback(prom.stop)
        wait_for(lambda: prom.value('up{job="api"}') == 1, 30, "first scrape of the API")

        # Queued while no worker runs: Prometheus sees the backlog and its age.
        job_ids = [upload(api, sample_path).json()["id"] for _ in range(GOOD_JOBS)]
        bad = workdir / "no-designation.csv"
        bad.write_text(",description,productid,imageid\n0,un produit,1,2\n")
        failed = upload(api, bad)
        assert failed.status_code == 202, failed.text
        job_ids.append(failed.json()["id"])
        total = len(job_ids)
        wait_for(
            lambda: prom.value("max(cleaning_queue_depth)") == total,
            30,
            "Prometheus to see the queued jobs",
        )

        # The worker listens on an idle queue until Prometheus has scraped it: a job that
        # ended before the first scrape would be no increase to rate() (Prometheus counts
        # a counter's rises only once it has seen the series).
        hold_file = workdir / "hold"
        worker = stack.start_worker(
            "observed",
            concurrency=2,
            queues="observability-hold",
            hold_file=hold_file,
            WORKER_METRICS_PORT=str(worker_port),
            WORKER_METRICS_ADDR="127.0.0.1",
        )
        cleanup.callback(stop, worker)
        wait_for(lambda: prom.value('up{job="ml-worker"}') == 1, 30, "first scrape of the worker")
        _wait_scrapes(prom, "ml-worker")
        # Each pool process holds its first job (tests/support/hold.py) until both are
        # running: the jobs run in two processes however fast the first one would end.
        with held(hold_file):
            control = Celery(broker=stack.redis.url)
            replies = control.control.add_consumer(
                "cleaning", destination=[f"observed@{socket.gethostname()}"], reply=True, timeout=10
            )
            control.close()
            assert replies, "the worker did not start consuming the cleaning queue"
            wait_for(
                lambda: (
                    sum(api.get(f"/jobs/{i}").json()["status"] == "running" for i in job_ids) == 2
                ),
                60,
                "both pool processes holding a job",
            )

        def all_done() -> bool:
            return all(api.get(f"/jobs/{i}").json()["status"] in TERMINAL for i in job_ids)

        wait_for(all_done, 60, "the jobs")
        wait_for(
            lambda: (
                prom.value("sum(cleaning_jobs_finished_total)") == total
                and prom.value("max(cleaning_queue_depth)") == 0
            ),
            30,
            "Prometheus to see every job finished",
        )
        _wait_scrapes(prom, "ml-worker")
        yield Observed(
            stack,
            prom,
            api,
            job_ids,
            failed.json()["id"],
            start,
            worker.pid,
            f"http://127.0.0.1:{worker_port}/metrics",
            time.time(),
        )


def test_jobs_ran_in_several_pool_processes(observed: Observed) -> None:
    """The worker metrics below sum several processes: the jobs ran in more than one."""
    jobs = MongoClient(observed.stack.store.url)[MONGO_DB]["jobs"]
    statuses = {d["_id"]: d["status"] for d in jobs.find({}, {"status": 1})}
    assert statuses[observed.failed_id] == "failed"
    assert sorted(statuses.values()).count("succeeded") == GOOD_JOBS
    assert len(set(jobs.distinct("worker"))) >= 2


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(cleaning_jobs_submitted_total)", GOOD_JOBS + 1),
        ('sum(cleaning_jobs_finished_total{status="succeeded"})', GOOD_JOBS),
        ('sum(cleaning_jobs_finished_total{status="failed"})', 1),
        ('sum(cleaning_jobs_finished_total{status="cancelled"})', 0),
        ("sum(cleaning_rows_cleaned_total)", GOOD_JOBS * SAMPLE_ROWS),
        ("sum(cleaning_job_duration_seconds_count)", GOOD_JOBS + 1),
        ("sum(cleaning_job_queue_wait_seconds_count)", GOOD_JOBS + 1),
        ("sum(cleaning_worker_processes)", 2),
        ("sum(cleaning_worker_busy_processes)", 0),
        ('max(cleaning_jobs{status="succeeded"})', GOOD_JOBS),
        ('max(cleaning_jobs{status="failed"})', 1),
        ('max(cleaning_jobs{status="queued"})', 0),
        ("max(cleaning_oldest_queued_job_age_seconds)", 0),
        ("max_over_time(max(cleaning_queue_depth)[5m:1s])", GOOD_JOBS + 1),
        ('min(cleaning_state_up{source="broker"})', 1),
        ('min(cleaning_state_up{source="store"})', 1),
        ('count(up{job="ml-worker"} == 1)', 1),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_metric_values(observed: Observed, expr: str, expected: float) -> None:
    assert observed.prom.value(expr) == expected


def test_input_and_output_bytes_counted(observed: Observed, sample_path: Path) -> None:
    size = sample_path.stat().st_size
    assert observed.prom.value("sum(cleaning_input_bytes_total)") == GOOD_JOBS * size
    written = observed.prom.value("sum(cleaning_output_bytes_total)")
    assert written is not None and 0.5 * GOOD_JOBS * size < written < 1.5 * GOOD_JOBS * size


def test_oldest_queued_age_was_seen(observed: Observed) -> None:
    assert (
        observed.prom.value("max_over_time(max(cleaning_oldest_queued_job_age_seconds)[5m:1s])") > 0
    )


@pytest.mark.parametrize(
    ("dashboard", "panel", "target"),
    _dashboard_targets(),
    ids=lambda v: v if isinstance(v, str) else v["refId"] if isinstance(v, dict) else None,
)
def test_dashboard_query_returns_data(
    observed: Observed, dashboard: str, panel: str, target: dict[str, Any]
) -> None:
    expr = plots.substitute(target["expr"], RATE_INTERVAL, RANGE)
    # At the end of the traffic: evaluated later, a loaded machine may leave a rate()
    # window without a request (0/0 = NaN), which says nothing about the query.
    body = observed.prom.query(expr, at=observed.at)
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    values = [float(s["value"][1]) for s in body["data"]["result"]]
    assert values, f"no data: {expr}"
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf: {expr} → {values}"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_alert_expression_parses(observed: Observed, rule: dict[str, Any]) -> None:
    body = observed.prom.query(rule["expr"])
    assert body["status"] == "success", f"{rule['alert']}: {body.get('error')}"


def test_prometheus_loaded_every_rule_and_none_fires(observed: Observed) -> None:
    groups = httpx.get(f"{observed.prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in _alert_rules()}
    assert all(r["health"] == "ok" for r in loaded.values()), loaded
    firing = [r["name"] for r in loaded.values() if r["state"] == "firing"]
    assert firing == []


def test_every_target_is_scraped(observed: Observed) -> None:
    targets = httpx.get(f"{observed.prom.url}/api/v1/targets", timeout=10).json()["data"]
    health = {t["labels"]["job"]: t["health"] for t in targets["activeTargets"]}
    assert health == {"api": "up", "ml-worker": "up", "prometheus": "up"}


def _traffic_for_docs(observed: Observed, sample_path: Path, seconds: float) -> None:
    """A minute of mixed traffic, so that the pictures show rates, a backlog and its drain."""
    api, workdir = observed.api, observed.stack.logs.parent
    big = workdir / "big.csv"
    header, *rows = sample_path.read_text(encoding="utf-8").splitlines(keepends=True)
    big.write_text(header + "".join(rows * 5), encoding="utf-8")  # 3,360 rows
    bad = workdir / "no-designation.csv"
    ids: list[str] = []
    deadline = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < deadline:
        tick += 1
        if tick == 25:  # a burst: the queue fills, then drains; the last one is cancelled
            burst = [upload(api, big).json()["id"] for _ in range(8)]
            assert api.post(f"/jobs/{burst[-1]}/cancel").status_code == 200
            ids += burst
        else:
            ids.append(upload(api, bad if tick % 6 == 0 else sample_path).json()["id"])
        api.get("/jobs", params={"limit": 5})
        api.get("/jobs/0123456789abcdef012345")  # 404
        time.sleep(1.0)
    wait_for(
        lambda: all(api.get(f"/jobs/{i}").json()["status"] in TERMINAL for i in ids),
        120,
        "the jobs of the docs traffic",
    )
    time.sleep(10)  # the rates come back down in the pictures
    _wait_scrapes(observed.prom, "ml-worker")


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _live_processes(url: str) -> float:
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith("cleaning_worker_processes "):
            return float(line.split()[1])
    raise AssertionError("cleaning_worker_processes not exported")


def test_write_docs(observed: Observed, sample_path: Path) -> None:
    """WRITE_DOCS=1: the pictures of docs/dashboards/, from this run's Prometheus data."""
    if os.environ.get("WRITE_DOCS") != "1":
        pytest.skip("set WRITE_DOCS=1 to redraw docs/dashboards/*.png")
    _traffic_for_docs(observed, sample_path, seconds=60)
    for old in plots.DOCS_DIR.glob("*.png"):
        old.unlink()
    written = plots.plot_dashboards(
        observed.prom.url, observed.start, time.time(), plots.DOCS_DIR, rate_interval="10s"
    )
    assert written and all(p.stat().st_size > 10_000 for p in written)


def test_a_killed_pool_process_stops_counting(observed: Observed) -> None:
    """SIGKILL: no shutdown hook runs, yet the dead process leaves the live gauges."""
    before = _children(observed.worker_pid)
    assert _live_processes(observed.worker_metrics) == 2
    victim = max(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (
            victim not in _children(observed.worker_pid)
            and len(_children(observed.worker_pid)) >= len(before)
        ),
        30,
        "Celery to replace the killed pool process",
    )
    wait_for(lambda: _live_processes(observed.worker_metrics) == 2, 10, "two live processes")
    time.sleep(0.5)
    assert _live_processes(observed.worker_metrics) == 2


# ---------------------------------------------------------------- config, no services
def _provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in (GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml"):
        uids |= {d["uid"] for d in yaml.safe_load(path.read_text())["datasources"]}
    return uids


def test_dashboards_name_the_provisioned_datasource() -> None:
    uids = _provisioned_datasource_uids()
    assert uids == {"prometheus"}
    for dashboard in plots.load_dashboards():
        for panel in plots.panels(dashboard):
            refs = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
            for ref in refs:
                assert ref and ref["uid"] in uids, (dashboard["title"], panel["title"], ref)


def test_dashboards_are_provisioned_from_their_directory() -> None:
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "cleaning.yml").read_text()
    )
    assert [p["options"]["path"] for p in provider["providers"]] == ["/etc/grafana/dashboards"]
    assert {d["uid"] for d in plots.load_dashboards()} == {"cleaning-api", "cleaning-jobs"}


def test_alert_rules_unit_tests() -> None:
    """promtool: each alert fires on the series that should trigger it, and only then."""
    promtool = _binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", "tests/alerts_test.yml"],
        cwd=PROM_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_config_is_valid(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    # The production rule_files path is the container's: check a copy pointing at ours.
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROM_DIR / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_compose_monitoring_services() -> None:
    """Pinned images, health checks, the guide's ports, secrets only from the environment,
    and mounts where the configs expect their files."""
    compose = yaml.safe_load((ROOT / "docker-compose-monitoring.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        image, _, tag = service["image"].rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (name, service["image"])
        assert service["healthcheck"]["test"], name
        assert "mlops-network" in service["networks"], name
    assert services["prometheus"]["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:${GRAFANA_PORT:-3000}:3000"]
    assert services["flower"]["profiles"] == ["debug"]
    grafana_env = services["grafana"]["environment"]
    # Required when Grafana starts, not by every compose command (the monitoring profile):
    # its entrypoint refuses to start without a password (tests/static checks it runs so).
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(services["grafana"]["entrypoint"])
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    mounts = {
        target: source
        for service in services.values()
        for source, target, *_ in (v.split(":") for v in service.get("volumes", []))
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == "./docker/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "./docker/prometheus/rules"
    assert mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    assert mounts["/etc/grafana/dashboards"] == "./docker/grafana/dashboards"
    home = grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA_DIR / "dashboards" / Path(home).name).exists()
