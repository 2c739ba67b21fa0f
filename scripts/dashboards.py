"""The Grafana dashboards, as code: writes docker/grafana/dashboards/*.json.

    uv run python scripts/dashboards.py          # regenerate the committed JSON
    uv run python scripts/dashboards.py --check  # exit 1 if the JSON differs (a test runs this)

Edit the panels here, never the JSON. Every query names the provisioned datasource
(uid `prometheus`, docker/grafana/provisioning/datasources/prometheus.yml).

Windows: `$__rate_interval` for request rates and ratios (Grafana derives it from the
scrape interval, 15 s: at least 1 min); job percentiles use a fixed 15 min window,
since jobs are minutes apart and a 1 min window would mostly hold none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docker" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
JOB_WINDOW = "15m"
GRID_WIDTH = 24

Panel = dict[str, Any]


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": True,
    }


def _targets(queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def timeseries(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str,
    width: int = 12,
    height: int = 8,
    min_zero: bool = True,
) -> Panel:
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "spanNulls": False},
    }
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "gridPos": {"w": width, "h": height},
    }


def stat(
    title: str,
    description: str,
    expr: str,
    unit: str = "none",
    decimals: int = 0,
    width: int = 4,
    color: str = "blue",
) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [{**target(expr, title), "instant": True, "range": False}],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": decimals,
                "color": {"mode": "fixed", "fixedColor": color},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "value",
        },
        "gridPos": {"w": width, "h": 4},
    }


def quantiles(metric: str, by: str = "", window: str = RATE) -> list[tuple[str, str]]:
    """p50, p95, p99 of a histogram; per `by` label when given."""
    labels = f"le, {by}" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[{window}])))",
            f"{{{{{by}}}}}" if by else f"p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list[Panel]]]) -> dict:
    """Lay rows and panels out on Grafana's 24-column grid, top to bottom."""
    panels: list[Panel] = []
    y = 0
    for row_title, row_panels in rows:
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            }
        )
        y += 1
        x, line_height = 0, 0
        for panel in row_panels:
            w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
            if x + w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            line_height = max(line_height, h)
            panels.append(panel)
        y += line_height
    for panel_id, panel in enumerate(panels, start=1):
        panel["id"] = panel_id
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["cleaning"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "templating": {"list": []},
        "links": [],
        "panels": panels,
    }


def api_dashboard() -> dict:
    requests = f"rate(http_requests_total[{RATE}])"
    ratio = (
        f'(sum(rate(http_requests_total{{status=~"{{cls}}"}}[{RATE}])) or vector(0))'
        f" / sum({requests})"
    )
    return dashboard(
        "cleaning-api",
        "Cleaning service — API",
        "How much the HTTP API serves, how much of it fails, and how fast each route answers.",
        [
            (
                "Traffic: how much, and how much fails",
                [
                    timeseries(
                        "Requests per second by route",
                        "All requests, by route template (/jobs/{job_id}, …). /metrics excluded.",
                        [(f"sum by (handler) ({requests})", "{{handler}}")],
                        "reqps",
                    ),
                    timeseries(
                        "Error ratio",
                        "Share of requests answered 5xx (server: 503 = MongoDB or Redis down) "
                        "and 4xx (client: bad input, unknown id, 409 conflicts).",
                        [
                            (ratio.replace("{cls}", "5.."), "5xx"),
                            (ratio.replace("{cls}", "4.."), "4xx"),
                        ],
                        "percentunit",
                        width=6,
                    ),
                    timeseries(
                        "Responses by status class",
                        "Requests per second by status class (2xx, 4xx, 5xx).",
                        [(f"sum by (status) ({requests})", "{{status}}")],
                        "reqps",
                        width=6,
                    ),
                ],
            ),
            (
                "Latency: how long each route takes to answer",
                [
                    timeseries(
                        f"Latency p{p} by route",
                        f"{p}th percentile of the time until the response starts, by route "
                        "(an SSE stream or a download counts its first byte).",
                        [quantiles("http_request_duration_seconds", "handler")[i]],
                        "s",
                        width=8,
                    )
                    for i, p in enumerate((50, 95, 99))
                ]
                + [
                    timeseries(
                        "Latency of all requests: p50 / p95 / p99",
                        "Every route together, from the fine-grained histogram.",
                        quantiles("http_request_duration_highr_seconds"),
                        "s",
                    ),
                    timeseries(
                        "Bytes received and sent per second",
                        "Request bodies (uploads) and response bodies (results, JSON).",
                        [
                            (f"sum(rate(http_request_size_bytes_sum[{RATE}]))", "received"),
                            (f"sum(rate(http_response_size_bytes_sum[{RATE}]))", "sent"),
                        ],
                        "Bps",
                    ),
                ],
            ),
        ],
    )


def jobs_dashboard() -> dict:
    finished = "cleaning_jobs_finished_total"
    failed = f'{finished}{{status="failed"}}'

    def total(expr: str) -> str:
        return f"sum(increase({expr}[$__range]))"

    return dashboard(
        "cleaning-jobs",
        "Cleaning service — Jobs & workers",
        "How many jobs come in and how they end, how long they wait and run, how much data "
        "the workers clean, and whether there are enough workers for the queue.",
        [
            (
                "Jobs: how many, and how they end (over the dashboard's time range)",
                [
                    stat(
                        "Submitted",
                        "Jobs created by POST /jobs/clean.",
                        total("cleaning_jobs_submitted_total"),
                    ),
                    stat(
                        "Succeeded",
                        "Jobs that ended succeeded.",
                        total(f'{finished}{{status="succeeded"}}'),
                        color="green",
                    ),
                    stat(
                        "Failed",
                        "Jobs that ended failed: bad input, or a worker lost too often.",
                        total(failed),
                        color="red",
                    ),
                    stat(
                        "Cancelled",
                        "Jobs cancelled by request (queued: by the API; running: by the worker).",
                        total(f'{finished}{{status="cancelled"}}'),
                        color="orange",
                    ),
                    stat(
                        "Failure ratio",
                        "Failed among finished jobs (0 when none finished).",
                        f"{total(failed)} / clamp_min({total(finished)}, 1)",
                        unit="percentunit",
                        decimals=1,
                        color="red",
                    ),
                    stat(
                        "Rows cleaned",
                        "Rows read and cleaned by the workers.",
                        total("cleaning_rows_cleaned_total"),
                        unit="short",
                        color="purple",
                    ),
                    timeseries(
                        "Jobs per minute: submitted and finished",
                        "Submissions, and jobs reaching a final status, per minute.",
                        [
                            (f"sum(rate(cleaning_jobs_submitted_total[{RATE}])) * 60", "submitted"),
                            (f"sum by (status) (rate({finished}[{RATE}])) * 60", "{{status}}"),
                        ],
                        "short",
                        width=24,
                    ),
                ],
            ),
            (
                f"Durations: how long jobs wait and run (percentiles over {JOB_WINDOW})",
                [
                    timeseries(
                        "Job duration p50 / p95 / p99",
                        "From the claim by a worker to the final status.",
                        quantiles("cleaning_job_duration_seconds", window=JOB_WINDOW),
                        "s",
                    ),
                    timeseries(
                        "Queue wait p50 / p95 / p99",
                        "From submission to the first claim by a worker.",
                        quantiles("cleaning_job_queue_wait_seconds", window=JOB_WINDOW),
                        "s",
                    ),
                ],
            ),
            (
                "Throughput: how much data the workers clean",
                [
                    timeseries(
                        "Rows cleaned per second",
                        "All workers together, counted chunk by chunk.",
                        [(f"sum(rate(cleaning_rows_cleaned_total[{RATE}]))", "rows/s")],
                        "short",
                    ),
                    timeseries(
                        "Bytes read and written per second",
                        "Input read chunk by chunk; results counted when a job succeeds.",
                        [
                            (f"sum(rate(cleaning_input_bytes_total[{RATE}]))", "read"),
                            (f"sum(rate(cleaning_output_bytes_total[{RATE}]))", "written"),
                        ],
                        "Bps",
                    ),
                ],
            ),
            (
                "Queue and workers: is there enough capacity",
                [
                    timeseries(
                        "Queue depth",
                        "Tasks waiting in the Redis queue 'cleaning' (read by the API at "
                        "each scrape).",
                        [("max(cleaning_queue_depth)", "waiting tasks")],
                        "short",
                        width=6,
                    ),
                    timeseries(
                        "Oldest queued job age",
                        "How long the oldest job still queued has waited (0: none waits).",
                        [("max(cleaning_oldest_queued_job_age_seconds)", "oldest queued")],
                        "s",
                        width=6,
                    ),
                    timeseries(
                        "Active workers",
                        "ml-worker containers answering Prometheus, their live pool "
                        "processes, and how many of those run a task now.",
                        [
                            ('count(up{job="ml-worker"} == 1) or vector(0)', "containers up"),
                            ("sum(cleaning_worker_processes)", "pool processes"),
                            ("sum(cleaning_worker_busy_processes)", "busy processes"),
                        ],
                        "short",
                        width=6,
                    ),
                    timeseries(
                        "Jobs in the store by status",
                        "Job documents in MongoDB per status (expired jobs are deleted).",
                        [("max by (status) (cleaning_jobs)", "{{status}}")],
                        "short",
                        width=6,
                    ),
                    timeseries(
                        "Celery tasks per minute by outcome",
                        "Tasks run by the pool processes: clean, sweep, deliver_callback.",
                        [
                            (
                                "sum by (task, state) "
                                f"(rate(cleaning_worker_tasks_total[{RATE}])) * 60",
                                "{{task}} {{state}}",
                            )
                        ],
                        "short",
                    ),
                    timeseries(
                        "Broker and store reachable",
                        "1 when the API could read Redis (broker) and MongoDB (store) at the "
                        "last scrape.",
                        [("min by (source) (cleaning_state_up)", "{{source}}")],
                        "short",
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {"api.json": api_dashboard, "jobs-workers.json": jobs_dashboard}


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date (run: uv run python scripts/dashboards.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
