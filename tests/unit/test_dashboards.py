"""The committed Grafana dashboards are what scripts/dashboards.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "scripts" / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_the_generator_output() -> None:
    generator = _generator()
    rendered = generator.render()
    committed = {p.name for p in generator.OUT_DIR.glob("*.json")}
    assert committed == set(rendered), "a dashboard JSON without generator, or the reverse"
    for name, text in rendered.items():
        assert (generator.OUT_DIR / name).read_text(encoding="utf-8") == text, (
            f"{name} is out of date: run `uv run python scripts/dashboards.py`"
        )


def test_panels_do_not_overlap() -> None:
    for dashboard in (build() for build in _generator().DASHBOARDS.values()):
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & mine, f"{dashboard['title']}: {panel['title']} overlaps"
            cells |= mine
