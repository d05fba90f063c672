"""The pipeline health dashboard (Prometheus-backed): structure, its data source provisioned, and
every metric and label its PromQL uses exists in the registries of the services that export them.

The registries are the services' own `Metrics` classes, instantiated here, so renaming a metric
or a label in a service fails this test instead of leaving a silently empty panel. The jobs the
dashboard names are the scrape jobs deploy/prometheus generates from the stack catalogue.
"""

import json
import pathlib
import re

import pytest
from prometheus_client.metrics import MetricWrapperBase

from deploy.prometheus import scrape_config
from jobs.iot.aggregator import ops
from services.analytics import metrics as analytics_metrics
from services.ingest import metrics as ingest_metrics
from services.ws_gateway import metrics as ws_metrics

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboards" / "prometheus" / "pipeline_health.json"
DATASOURCES = HERE / "provisioning" / "datasources" / "prometheus.yaml"

# Series Prometheus adds itself, and the labels every scraped series carries (target labels).
BUILTIN = {"up": set()}
TARGET_LABELS = {"job", "instance", "service", "profiles"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
SUFFIXES = {
    "counter": (("_total", ()), ("_created", ())),
    "gauge": (("", ()),),
    "histogram": (("_bucket", ("le",)), ("_count", ()), ("_sum", ()), ("_created", ())),
    "summary": (("_count", ()), ("_sum", ()), ("_created", ())),
}


def registry_series():
    """Every series name the services export -> its label names."""
    series = {}
    for metrics in (analytics_metrics.Metrics(), ops.Metrics(), ingest_metrics.Metrics(), ws_metrics.Metrics()):
        for metric in vars(metrics).values():
            if isinstance(metric, MetricWrapperBase):
                for suffix, extra in SUFFIXES[metric._type]:
                    series[metric._name + suffix] = set(metric._labelnames) | set(extra)
    return series


SERIES = registry_series()


def selectors(expr):
    """(metric name, {label: value}) for each series selector, and the labels of by/without clauses."""
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [5m], [$__rate_interval]
    grouping = set()
    clauses = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for clause in re.findall(clauses, expr):
        grouping |= {label.strip() for label in clause.split(",") if label.strip()}
    expr = re.sub(clauses, " ", expr)
    found = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{([^}]*)\})?(\s*\()?", expr):
        name, _, matchers, call = match.groups()
        if call or name in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers or ""))
        found.append((name, labels))
    return found, grouping


def targets():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel, target


def test_dashboard_is_well_formed_and_uses_the_provisioned_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    text = DATASOURCES.read_text()
    assert re.search(r"^\s+uid:\s*dp-prometheus\s*$", text, re.M) and re.search(r"^\s+type:\s*prometheus\s*$", text, re.M)
    other_uids = {json.loads(p.read_text())["uid"] for p in (HERE / "dashboards").glob("*.json")}
    assert dashboard["uid"] == "dp-pipeline-health" and dashboard["uid"] not in other_uids
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["type"] in ("timeseries", "stat") and {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "dp-prometheus"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()


@pytest.mark.parametrize("topic", ["Consumer lag", "Throughput", "Errors", "Dead letters"])
def test_the_health_questions_each_have_a_panel(topic):
    titles = [panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]]
    assert any(title.startswith(topic) for title in titles), titles


def test_every_metric_and_label_exists_in_the_service_registries():
    used = set()
    for panel, target in targets():
        found, grouping = selectors(target["expr"])
        assert found, "%s: no series in %r" % (panel["title"], target["expr"])
        available = set(TARGET_LABELS)
        for name, labels in found:
            known = SERIES.get(name, BUILTIN.get(name))
            assert known is not None, "%s: metric %s is not in any service registry (renamed?)" % (panel["title"], name)
            for label in labels:
                assert label in known | TARGET_LABELS, "%s: %s has no label %s (it has %s)" % (
                    panel["title"], name, label, sorted(known))
            available |= known
            used.add(name)
        assert grouping <= available, "%s: grouping by %s, not labels of %s" % (
            panel["title"], sorted(grouping - available), [n for n, _ in found])
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert label in grouping | {l for _, ls in found for l in ls} | TARGET_LABELS, (panel["title"], label)
    # Each scraped service is on the dashboard.
    for prefix in ("analytics_", "dp_iot_aggregator_", "dp_ingest_"):
        assert any(name.startswith(prefix) for name in used), prefix


def test_the_jobs_named_are_the_generated_scrape_jobs():
    for panel, target in targets():
        for name, labels in selectors(target["expr"])[0]:
            if "job" in labels:
                assert set(labels["job"].split("|")) == set(scrape_config.ENDPOINTS), panel["title"]


def test_the_parser_finds_what_it_must():
    found, grouping = selectors('histogram_quantile(0.95, sum by (le, rpc) (rate(x_bucket{a="1",b!~"2"}[5m]))) '
                                "/ on (rpc) sum(y_total)")
    assert found == [("x_bucket", {"a": "1", "b": "2"}), ("y_total", {})] and grouping == {"le", "rpc"}
    assert "analytics_consumer_lag" in SERIES and SERIES["analytics_consumer_lag"] == {"topic", "partition"}
    assert SERIES["dp_ingest_ack_latency_seconds_bucket"] == {"rpc", "le"}
