"""Draw the Grafana dashboard's panels as a PNG from a Prometheus server (no Grafana needed).

Each panel's queries go through Prometheus's `query_range` API over the last minutes, and the
panels are laid out on the dashboard's own 24-column grid. It renders docs/dashboard.png and lets
anyone see the dashboard with real data where no Grafana runs.

Usage:
    python -m tools.dashboard_snapshot --prometheus http://127.0.0.1:9090 --minutes 15 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DASHBOARD = Path(__file__).resolve().parents[1] / "docker" / "grafana" / "dashboards" / "zipgate.json"
GRAFANA_INTERVAL_VARIABLES = ("$__rate_interval", "$__interval", "$__range")
GRID_COLUMNS = 24
POINTS_PER_PANEL = 240  # query_range resolution: enough for a smooth line, cheap to fetch
UNIT_LABELS = {"s": "seconds", "reqps": "requests / s", "ops": "per second", "percentunit": "fraction", "short": ""}


@dataclass(frozen=True)
class Series:
    """One line of a panel: its legend and its points (unix seconds, value)."""

    legend: str
    times: tuple[float, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class PanelData:
    """A panel's title, unit, grid position and fetched series."""

    title: str
    unit: str
    grid: dict[str, int]
    series: tuple[Series, ...]


def to_promql(expr: str, rate_interval: str = "1m") -> str:
    """Replace Grafana's interval variables so Prometheus can evaluate `expr`.

    Raises:
        ValueError: another `$variable` is left.
    """
    for variable in GRAFANA_INTERVAL_VARIABLES:
        expr = expr.replace(variable, rate_interval)
    if "$" in expr:
        raise ValueError(f"unsupported Grafana variable in {expr!r}")
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` replaced by the series' label value."""
    text = template
    for name, value in labels.items():
        text = text.replace("{{" + name + "}}", value)
    return text.replace("{{", "").replace("}}", "").strip() or json.dumps(labels)


def fetch_panels(
    prometheus_url: str, dashboard: dict[str, Any], start_s: float, end_s: float, rate_interval: str = "1m"
) -> list[PanelData]:
    """Run every panel's queries over [start_s, end_s] against Prometheus.

    Args:
        prometheus_url: e.g. "http://127.0.0.1:9090".
        dashboard: the dashboard JSON.
        start_s: range start, unix seconds.
        end_s: range end, unix seconds.
        rate_interval: what Grafana's `$__rate_interval` stands for.

    Returns:
        One PanelData per panel, in dashboard order.

    Raises:
        httpx.HTTPError: Prometheus is unreachable or refuses a query.
    """
    step_s = max((end_s - start_s) / POINTS_PER_PANEL, 1.0)
    panels = []
    with httpx.Client(base_url=prometheus_url, timeout=10.0) as client:
        for panel in dashboard["panels"]:
            series: list[Series] = []
            for target in panel.get("targets", []):
                response = client.get(
                    "/api/v1/query_range",
                    params={
                        "query": to_promql(target["expr"], rate_interval),
                        "start": start_s,
                        "end": end_s,
                        "step": step_s,
                    },
                )
                response.raise_for_status()
                for result in response.json()["data"]["result"]:
                    points = [(float(t), float(v)) for t, v in result["values"]]
                    series.append(
                        Series(
                            legend(target.get("legendFormat", ""), result["metric"]),
                            tuple(t for t, _ in points),
                            tuple(v for _, v in points),
                        )
                    )
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
            panels.append(PanelData(panel["title"], unit, panel["gridPos"], tuple(series)))
    return panels


def plot(panels: list[PanelData], out: Path, title: str = "zipgate") -> Path:
    """Draw the panels on the dashboard's grid into a PNG.

    Args:
        panels: from `fetch_panels`.
        out: the PNG path (parent folders are created).
        title: the figure title.

    Returns:
        `out`.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    rows = max(p.grid["y"] + p.grid["h"] for p in panels)
    figure = plt.figure(figsize=(18, rows * 0.45), dpi=90)
    grid = GridSpec(rows, GRID_COLUMNS, figure=figure, hspace=2.2, wspace=1.6, top=0.97, bottom=0.02)
    origin = min((s.times[0] for p in panels for s in p.series if s.times), default=0.0)
    span_min = max(((s.times[-1] - origin) / 60 for p in panels for s in p.series if s.times), default=1.0)
    for panel in panels:
        g = panel.grid
        axes = figure.add_subplot(grid[g["y"] : g["y"] + g["h"] - 1, g["x"] : g["x"] + g["w"]])
        axes.set_title(panel.title, fontsize=10, loc="left")
        axes.set_ylabel(UNIT_LABELS.get(panel.unit, panel.unit), fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        for series in panel.series:
            minutes = [(t - origin) / 60 for t in series.times]
            values = [v if math.isfinite(v) else math.nan for v in series.values]
            axes.plot(minutes, values, linewidth=1.2, label=series.legend[:40])
        if panel.series:
            axes.legend(fontsize=6, loc="upper left", ncol=3 if len(panel.series) > 6 else 1, framealpha=0.6)
        else:
            axes.text(0.5, 0.5, "No data", ha="center", va="center", transform=axes.transAxes, color="grey")
        axes.set_xlim(0, span_min)  # one time axis for every panel, as in Grafana
        axes.set_xlabel("minutes", fontsize=7)
    figure.suptitle(title, fontsize=14, x=0.02, y=0.995, ha="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, bbox_inches="tight")
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: snapshot the last --minutes of a Prometheus into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--minutes", type=float, default=15.0, help="time range ending now")
    parser.add_argument("--rate-interval", default="1m", help="value of Grafana's $__rate_interval")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args(argv)
    end_s = time.time()
    dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    panels = fetch_panels(args.prometheus, dashboard, end_s - args.minutes * 60, end_s, args.rate_interval)
    plot(panels, args.out, title=dashboard.get("title", "dashboard"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
