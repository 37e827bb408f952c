"""The deploy files that name predictd's metrics use only names /metrics shows: a renamed metric must not leave a
Grafana panel or an alert silently empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

from predictd.daemon import metrics
from predictd.daemon.db import Database
from predictd.daemon.spool import Spool
from tests.support import REPO


def exposed_names(tmp_path: Path) -> set[str]:
    """Every sample name /metrics can show: the process's families (a counter as ``_total``, a histogram as
    ``_bucket``/``_sum``/``_count``) and the queue collector's gauges, read from a real database."""
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    db.upgrade()
    names: set[str] = set()
    for family in metrics.Exposition(metrics.QueueCollector(db, Spool(tmp_path / "spool"))).collect():
        names |= {s.name for s in family.samples}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_the_dashboard_and_alerts_use_only_metrics_predictd_exposes(tmp_path: Path) -> None:
    exposed = exposed_names(tmp_path)
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    queries += [str(v.get("query", "")) for v in dashboard.get("templating", {}).get("list", [])]
    queries.append((REPO / "deploy" / "prometheus-rules.yml").read_text())
    used = {name for q in queries for name in re.findall(r"\b(?:predictd|process)_[a-z_]+\b", q)}
    assert {"predictd_instances_received_total", "predictd_stage_duration_seconds_bucket"} <= used
    assert used <= exposed, sorted(used - exposed)
