"""deploy/grafana/tradebus.json queries only metrics tradebus exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from bus.monitor.gauges import GAUGE_NAMES
from bus.observability.metrics import SUBSCRIBER_METRICS, Recorder

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tradebus.json"


def exposed_names() -> set[str]:
    """Every sample name a scrape of a worker or of `tradebus metrics --serve` can return."""
    registry = CollectorRegistry()
    Recorder(registry)
    names = set(GAUGE_NAMES)
    for family in registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    assert {name for name, _ in SUBSCRIBER_METRICS.values()} <= names
    return names


def test_dashboard_queries_only_existing_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\btradebus_[a-z_]+", expr)}
    assert used and used <= exposed_names(), used - exposed_names()
    # every metric family is on the dashboard
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exposed_names()}
    assert families <= {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
