"""Pictures of the Grafana dashboards, one PNG per dashboard row, plotted with matplotlib
from a Prometheus: a reader sees what the dashboards show without running Grafana.

The committed pictures in docs/dashboards/ come from the Prometheus of the proof test:

    WRITE_DOCS=1 uv run pytest tests/integration/test_observability.py

Against a running stack (the compose Prometheus on port 9090), the last hour:

    uv run python scripts/plot_dashboards.py --prometheus http://127.0.0.1:9090 --minutes 60

Grafana's variables are replaced as Grafana would: `$__rate_interval` by a window of at
least four scrapes, `$__range` by the plotted time span.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "docker" / "grafana" / "dashboards"
DOCS_DIR = ROOT / "docs" / "dashboards"


UNIT_LABELS = {
    "percentunit": "ratio",
    "s": "seconds",
    "Bps": "bytes/s",
    "reqps": "requests/s",
}


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def rows(dashboard: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(row title, its panels) in the order Grafana shows them."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.append((panel["title"], list(panel.get("panels", []))))
        elif out:
            out[-1][1].append(panel)
        else:
            out.append(("", [panel]))
    return out


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for _, row_panels in rows(dashboard) for p in row_panels]


def substitute(expr: str, rate_interval: str, range_: str) -> str:
    """Grafana's variables, replaced by concrete windows (PromQL durations)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().split(":")[0]).strip("-")


class Prometheus:
    def __init__(self, url: str, timeout: float = 10) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def _get(self, path: str, **params: Any) -> Any:
        body = self.client.get(path, params=params).json()
        if body.get("status") != "success":
            raise RuntimeError(f"{body.get('errorType')}: {body.get('error')} ({params})")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self._get("/api/v1/query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)[
            "result"
        ]


def _format_value(value: float, unit: str | None) -> str:
    if math.isnan(value):
        return "–"
    if unit == "percentunit":
        return f"{value:.1%}"
    return f"{value:,.0f}"


def plot_row(
    prom: Prometheus,
    title: str,
    row_panels: list[dict[str, Any]],
    start: float,
    end: float,
    step: float,
    rate_interval: str,
    out: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    span = end - start
    range_ = f"{max(1, math.ceil(span))}s"
    scale, xlabel = (60.0, "minutes") if span > 600 else (1.0, "seconds")
    stats = [p for p in row_panels if p["type"] == "stat"]
    series = [p for p in row_panels if p["type"] != "stat"]
    ncols = min(3, len(series)) or 1
    series_lines = math.ceil(len(series) / ncols)
    heights = ([1.0] if stats else []) + [3.2] * series_lines
    fig = plt.figure(figsize=(15, sum(heights) + 1.0))
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.6)
    fig.suptitle(title, fontsize=12, fontweight="bold", y=1.02)

    if stats:
        sub = grid[0].subgridspec(1, len(stats), wspace=0.1)
        for i, panel in enumerate(stats):
            ax = fig.add_subplot(sub[0, i])
            ax.axis("off")
            result = prom.query(substitute(panel["targets"][0]["expr"], rate_interval, range_), end)
            value = float(result[0]["value"][1]) if result else math.nan
            unit = panel["fieldConfig"]["defaults"].get("unit")
            ax.text(0.5, 0.6, _format_value(value, unit), ha="center", va="center", fontsize=18)
            ax.text(0.5, 0.05, panel["title"], ha="center", va="center", fontsize=9)
    if series:
        sub = grid[1 if stats else 0 :].subgridspec(series_lines, ncols, wspace=0.25, hspace=0.6)
        for i, panel in enumerate(series):
            ax = fig.add_subplot(sub[i // ncols, i % ncols])
            for target in panel["targets"]:
                expr = substitute(target["expr"], rate_interval, range_)
                for s in prom.query_range(expr, start, end, step):
                    xs = [(float(t) - start) / scale for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), s["metric"]))
            unit = panel["fieldConfig"]["defaults"].get("unit", "")
            ax.set_title(panel["title"], fontsize=10)
            ax.set_ylabel(UNIT_LABELS.get(unit, ""), fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_xlim(0, span / scale)
            ax.set_ylim(bottom=0)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="upper left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_dashboards(
    prometheus_url: str,
    start: float,
    end: float,
    out_dir: Path = DOCS_DIR,
    rate_interval: str | None = None,
    dashboards: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """One PNG per dashboard row, named <dashboard uid>-<row number>-<row title>.png."""
    prom = Prometheus(prometheus_url)
    step = max(1.0, (end - start) / 300)
    rate_interval = rate_interval or f"{max(60, math.ceil(4 * step))}s"
    written = []
    for dashboard in dashboards or load_dashboards():
        for n, (title, row_panels) in enumerate(rows(dashboard), start=1):
            name = f"{dashboard['uid']}-{n}-{slug(title)}.png"
            written.append(
                plot_row(
                    prom,
                    f"{dashboard['title']} · {title}",
                    row_panels,
                    start,
                    end,
                    step,
                    rate_interval,
                    out_dir / name,
                )
            )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=60, help="time span, ending now")
    parser.add_argument("--out", type=Path, default=DOCS_DIR)
    parser.add_argument("--rate-interval", help="window for $__rate_interval (default: 4 steps)")
    args = parser.parse_args(argv)
    end = time.time()
    for path in plot_dashboards(
        args.prometheus, end - args.minutes * 60, end, args.out, args.rate_interval
    ):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
