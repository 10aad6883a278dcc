"""Write the Kubernetes PrometheusRule from the compose stack's alert rules (one source of truth).

docker/alerts.yml is a Prometheus rule file; the Prometheus Operator wants the same `groups` inside
a PrometheusRule object. This writes k8s/components/monitoring/prometheusrule.yaml from it, and
tests/test_alert_rules.py fails when the committed file is stale.

Usage:
    python -m tools.prometheus_rule            # rewrite the PrometheusRule
    python -m tools.prometheus_rule --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "docker" / "alerts.yml"
PROMETHEUS_RULE = REPO / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from docker/alerts.yml by `python -m tools.prometheus_rule`: edit that file, then run
# this command (tests/test_alert_rules.py fails while the two differ).
# kube-prometheus-stack's Prometheus selects rules by label: add its release label in your overlay,
# or install the chart with ruleSelectorNilUsesHelmValues=false.
"""


def prometheus_rule(rule_file: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule object holding a rule file's groups.

    Args:
        rule_file: a parsed Prometheus rule file (`{"groups": [...]}`).

    Returns:
        The object, named `zipgate` (the kustomization sets its namespace and common labels).
    """
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "zipgate",
            "labels": {"app.kubernetes.io/name": "zipgate", "app.kubernetes.io/component": "gateway"},
        },
        "spec": {"groups": rule_file["groups"]},
    }


class _BlockStyleDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PromQL) as `|` blocks, so the output reads like the source."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockStyleDumper.add_representer(str, _str)


def render(alerts: Path = ALERTS) -> str:
    """The PrometheusRule file's text for the rule file `alerts`."""
    rule = prometheus_rule(yaml.safe_load(alerts.read_text(encoding="utf-8")))
    return HEADER + yaml.dump(rule, Dumper=_BlockStyleDumper, sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) the PrometheusRule; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PROMETHEUS_RULE.read_text(encoding="utf-8") if PROMETHEUS_RULE.exists() else ""
        if current != text:
            print(f"{PROMETHEUS_RULE} is stale: run python -m tools.prometheus_rule", file=sys.stderr)
            return 1
        return 0
    PROMETHEUS_RULE.write_text(text, encoding="utf-8")
    print(f"wrote {PROMETHEUS_RULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
