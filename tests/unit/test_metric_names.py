"""Every metric that an alert, the Grafana dashboard or a KEDA trigger reads is one that something
really exports. A query on a name nobody exports returns nothing, and an alert on nothing never
fires: this test is what turns a renamed metric into a failure instead of silence.

What counts as exported:
- the metrics defined in core.telemetry.metrics, walked in prometheus_client's REGISTRY;
- the families the custom collectors compute at scrape time (core.telemetry.backlog on a real,
  migrated PostgreSQL and Redis; core.telemetry.drift), collected for their metadata;
- Prometheus' own `up`;
- Flower's metrics, by the names Flower's installed source defines (read, not imported: creating
  them would register Flower's collectors in this process).
Labels are checked too: a selector's label matchers, and the `by (...)` of an aggregation taken
directly over it, must name labels the metric has (or ones Prometheus adds to every target).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import flower
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, Metric

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "inferq.json"
KEDA = sorted((ROOT / "deploy" / "k8s").glob("keda-*.yaml"))
# Labels Prometheus attaches to every scraped series (target labels and relabelling in
# deploy/prometheus/prometheus.yml), beside each metric's own.
TARGET_LABELS = {"job", "instance", "service", "__name__"}
# Sample names per family type: what the text format shows for a family of that type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# prometheus_client's metric classes, as Flower's source names them, and their family types.
FLOWER_TYPES = {"Counter": "counter", "PrometheusCounter": "counter", "Gauge": "gauge"}
FLOWER_TYPES |= {"Histogram": "histogram", "Summary": "summary"}

Exported = dict[str, frozenset[str]]  # sample name -> the labels it may carry


def samples_of(name: str, kind: str, labels: Iterable[str]) -> Exported:
    extra = {"histogram": {"le"}, "gaugehistogram": {"le"}, "summary": {"quantile"}}
    return {
        f"{name}{suffix}": frozenset(labels)
        | (extra.get(kind, set()) if suffix in ("", "_bucket") else set())
        for suffix in SUFFIXES[kind]
    }


def family_labels(family: Metric) -> set[str]:
    """A family's label names: from its samples, and from the names a *MetricFamily was created
    with (`_labelnames`; an empty labelled family has no samples to read them from)."""
    found = {label for sample in family.samples for label in sample.labels}
    return found | set(getattr(family, "_labelnames", ()))


def exported_by(families: Iterable[Metric]) -> Exported:
    found: Exported = {}
    for family in families:
        found.update(samples_of(family.name, family.type, family_labels(family)))
    return found


def registry_labels() -> dict[str, set[str]]:
    """Family name -> label names of the metric objects in REGISTRY. prometheus_client keeps them
    on each object (`_labelnames`, `_name`) only; a labelled metric without children collects
    no sample to read them from."""
    labels: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        name = getattr(collector, "_name", None)
        if name is not None:
            labels[name] = set(getattr(collector, "_labelnames", ()))
    return labels


def core_metrics() -> Exported:
    import core.telemetry.metrics  # noqa: F401  (registers the shared metrics in REGISTRY)

    labels = registry_labels()
    found: Exported = {}
    for family in REGISTRY.collect():
        names = family_labels(family) | labels.get(family.name, set())
        found.update(samples_of(family.name, family.type, names))
    return found


@pytest.fixture(scope="module")
def backlog_families() -> Iterator[list[Metric]]:
    """The API's backlog collector on a real, migrated PostgreSQL and Redis (read-only)."""
    from core.broker import MAINTENANCE_QUEUE, QUEUES, WEBHOOKS_QUEUE
    from core.inference.registry import all_tasks
    from core.telemetry.backlog import BacklogCollector
    from tests.conftest import migrated
    from tests.services import REDIS_BASE, fresh_postgres_database

    with fresh_postgres_database() as url:
        database = migrated(url)
        collector = BacklogCollector(
            database,
            redis_url=f"{REDIS_BASE}/4",
            queues=(*QUEUES, MAINTENANCE_QUEUE, WEBHOOKS_QUEUE),
            tasks=all_tasks,
            priorities=QUEUES,
            cache_seconds=5,
            rate_window_seconds=300,
        )
        try:
            yield list(collector.collect())
        finally:
            collector.close()
            database.dispose()


@pytest.fixture(scope="module")
def rollout_families() -> Iterator[list[Metric]]:
    """The API's rollout collector on a real, migrated PostgreSQL holding one rollout (a canary
    and a shadow) and its stats."""
    from core.db.models import ModelRollout, ModelRolloutStat
    from core.rollout.report import RolloutCollector
    from tests.conftest import migrated
    from tests.services import fresh_postgres_database

    with fresh_postgres_database() as url:
        database = migrated(url)
        with database.transaction() as session:
            session.add(
                ModelRollout(
                    task="sentiment",
                    revision=1,
                    canary="c",
                    canary_percent=10.0,
                    shadow="s",
                    changed_by="test",
                )
            )
            for version, role in (("c", "canary"), ("s", "shadow")):
                session.add(
                    ModelRolloutStat(
                        task="sentiment",
                        revision=1,
                        version=version,
                        role=role,
                        items=10,
                        compared=10,
                        agreed=9,
                    )
                )
        try:
            yield list(RolloutCollector(database).collect())
        finally:
            database.dispose()


def drift_families() -> list[Metric]:
    from core.config import Settings
    from core.telemetry.drift import DriftCollector

    return list(DriftCollector(Settings()).collect())


@cache
def flower_metrics() -> Exported:
    """Flower's metric names, from the constructor calls in its installed source."""
    found: Exported = {}
    for path in Path(flower.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            kind = FLOWER_TYPES.get(node.func.id)
            if kind is None or len(node.args) < 2 or not isinstance(node.args[0], ast.Constant):
                continue
            name = str(node.args[0].value)
            labels: list[str] = []
            if len(node.args) > 2 and isinstance(node.args[2], ast.List):
                labels = [str(e.value) for e in node.args[2].elts if isinstance(e, ast.Constant)]
            found.update(samples_of(name.removesuffix("_total"), kind, labels))
    return found


@pytest.fixture(scope="module")
def exported(backlog_families: list[Metric], rollout_families: list[Metric]) -> Exported:
    found = core_metrics()
    found.update(exported_by(backlog_families))
    found.update(exported_by(rollout_families))
    found.update(exported_by(drift_families()))
    found.update(flower_metrics())
    found["up"] = frozenset()
    return found


# --- what the deployment files read -----------------------------------------------------------


def grafana_to_promql(expr: str) -> str:
    return re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query in the alerts, the dashboard and the KEDA triggers."""
    found: list[tuple[str, str]] = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            found.append((f"alerts.yml {rule.get('alert', rule.get('record'))}", rule["expr"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            where = f"dashboard {panel['title']!r} {target['refId']}"
            found.append((where, grafana_to_promql(target["expr"])))
    for path in KEDA:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ScaledObject":
                continue
            for trigger in doc["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    found.append(
                        (f"{path.name} {trigger.get('name', '')}", trigger["metadata"]["query"])
                    )
    return found


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def grouped_selectors(expr: str) -> list[tuple[list[str], promql_parser.VectorSelector]]:
    """(by-labels, selector) for every `agg by (...)` applied (through functions) to a selector."""
    found: list[tuple[list[str], promql_parser.VectorSelector]] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            inner = node.expr
            while isinstance(inner, promql_parser.Call) and inner.args:
                inner = inner.args[-1]  # histogram_quantile(q, ...), rate(...): the series last
            if isinstance(inner, promql_parser.MatrixSelector):
                inner = inner.vector_selector
            if isinstance(inner, promql_parser.VectorSelector):
                found.append((list(node.modifier.labels), inner))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


QUERIES = queries()


def test_the_deployment_files_have_queries_to_check() -> None:
    wheres = " ".join(where for where, _ in QUERIES)
    assert "alerts.yml" in wheres and "dashboard" in wheres and "keda-" in wheres, wheres


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_every_queried_metric_is_exported_with_the_labels_it_is_matched_on(
    where: str, expr: str, exported: Exported
) -> None:
    for selector in selectors(expr):
        assert selector.name, f"{where}: a selector without a metric name: {expr}"
        assert selector.name in exported, f"{where}: nothing exports {selector.name}"
        allowed = exported[selector.name] | TARGET_LABELS
        matched = {matcher.name for matcher in selector.matchers.matchers}
        assert matched <= allowed, (
            f"{where}: {selector.name} has no label {sorted(matched - allowed)} "
            f"(it has {sorted(exported[selector.name])})"
        )
    for labels, selector in grouped_selectors(expr):
        allowed = exported.get(selector.name, frozenset()) | TARGET_LABELS
        assert set(labels) <= allowed, (
            f"{where}: grouping {selector.name} by {sorted(set(labels) - allowed)}, "
            f"a label it does not have"
        )


def test_the_custom_collectors_export_the_agreed_families(
    backlog_families: list[Metric], rollout_families: list[Metric]
) -> None:
    """The check above is only as good as its list: the collectors must really yield these."""
    names = {family.name for family in backlog_families + drift_families() + rollout_families}
    assert all(family.samples for family in rollout_families)  # each read from the rows
    agreed = {
        "inferq_backlog_items",
        "inferq_backlog_seconds",
        "inferq_oldest_pending_seconds",
        "inferq_queue_messages",
        "inferq_webhook_backlog",
        "inferq_drift_score",
        "inferq_drift_detected",
        "inferq_rollout_agreement",
        "inferq_rollout_canary_percent",
        "inferq_rollout_items",
    }
    assert agreed <= names, agreed - names


def test_flower_source_defines_the_metrics_the_dashboard_reads() -> None:
    assert {"flower_events_total", "flower_worker_online"} <= set(flower_metrics())


def test_an_unknown_metric_or_label_would_be_caught(exported: Exported) -> None:
    """The checker itself: a renamed metric and the old `queue` label are both refused."""
    assert "inferq_backlog_depth" not in exported
    assert "queue" not in exported["inferq_backlog_items"]
    assert {"task", "priority"} <= exported["inferq_backlog_items"]
    assert "route_class" in exported["inferq_rate_limited_total"]
    assert "le" in exported["inferq_model_confidence_bucket"]
    assert any(s.name == "inferq_backlog_items" for s in selectors("max(inferq_backlog_items)"))
