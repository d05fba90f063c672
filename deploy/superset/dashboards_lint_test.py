"""The dashboards as code, checked without a server: the YAML against the mart DDL and itself.

Every dataset must name a table of schema `mart` that deploy/postgres/migrations creates, list
only columns that table has (with a matching type), and define metrics over those columns; every
chart must use its dataset's columns and metrics, with a saved query context that asks for what
its params show; every dashboard must place existing charts; the built zip must hold exactly the
YAML files. A renamed mart column fails here, not in front of a user.
"""

import json
import os
import pathlib
import re
import zipfile

import pytest
import yaml

from deploy.superset import server

HERE = pathlib.Path(os.path.abspath(__file__)).parent  # the runfiles tree: not resolved
ROOT = HERE / "dashboards"
MIGRATIONS = HERE.parent / "postgres" / "migrations"

# DDL types as Superset reports them for PostgreSQL.
TYPES = {
    "date": "DATE",
    "text": "TEXT",
    "bigint": "BIGINT",
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "double precision": "DOUBLE PRECISION",
    "boolean": "BOOLEAN",
    "timestamptz": "TIMESTAMP WITH TIME ZONE",
    "uuid": "UUID",
    "jsonb": "JSONB",
}
COLUMN_LINE = re.compile(r"^\s+([a-z_][a-z0-9_]*)\s+(double precision|[a-z]+)\b")
SQL_WORDS = {
    "select", "from", "where", "and", "or", "not", "as", "distinct", "sum", "count", "avg", "min", "max",
    "null", "is", "case", "when", "then", "else", "end", "in", "mart", "coalesce", "nullif",
}
# Viz types whose single `metric` param is the query's only metric.
SINGLE_METRIC = {"big_number_total", "pie", "funnel", "heatmap_v2"}


def load_ddl():
    """{table: {column: type}} of every `CREATE TABLE mart.*` in the migrations."""
    tables = {}
    files = sorted(MIGRATIONS.glob("*.sql"))
    assert files, "no migrations found in %s (is //deploy/postgres:migrate_lib in data?)" % MIGRATIONS
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"CREATE TABLE mart\.(\w+) \((.*?)\n\);", text, re.S):
            columns = {}
            for line in match.group(2).splitlines():
                found = COLUMN_LINE.match(line)
                if found and found.group(2) in TYPES and found.group(1).upper() not in ("PRIMARY", "CHECK", "UNIQUE"):
                    columns[found.group(1)] = TYPES[found.group(2)]
            tables[match.group(1)] = columns
    return tables


def load(kind):
    return {path.relative_to(ROOT).as_posix(): yaml.safe_load(path.read_text(encoding="utf-8"))
            for path in sorted((ROOT / kind).rglob("*.yaml"))}


DDL = load_ddl()
DATABASES = load("databases")
DATASETS = load("datasets")
CHARTS = load("charts")
DASHBOARDS = load("dashboards")
DATASET_BY_UUID = {d["uuid"]: d for d in DATASETS.values()}
CHART_BY_UUID = {c["uuid"]: c for c in CHARTS.values()}


def identifiers(sql):
    """Lower-case identifiers of an SQL expression, minus keywords, functions and literals."""
    without_strings = re.sub(r"'[^']*'", "", sql)
    return {word.lower() for word in re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", without_strings)} - SQL_WORDS


def source_table(dataset):
    """The mart table a dataset reads: its table_name, or the one table its SQL selects from."""
    if not dataset.get("sql"):
        return dataset["table_name"]
    tables = set(re.findall(r"\bmart\.(\w+)", dataset["sql"]))
    assert len(tables) == 1, "virtual dataset %s must read exactly one mart table, reads %s" % (
        dataset["table_name"], tables)
    return tables.pop()


def test_ddl_has_the_mart_tables():
    for table in ("daily_category_revenue", "daily_funnel_step", "daily_top_product", "cohort_retention",
                  "customer_rfm"):
        assert table in DDL and DDL[table], "mart.%s not found in %s" % (table, MIGRATIONS)
    assert DDL["daily_category_revenue"]["net_revenue_amount_minor"] == "BIGINT"


def test_uuids_are_unique_and_references_resolve():
    everything = list(DATABASES.values()) + list(DATASETS.values()) + list(CHARTS.values()) + list(DASHBOARDS.values())
    uuids = [item["uuid"] for item in everything]
    assert len(uuids) == len(set(uuids))
    database_uuids = {d["uuid"] for d in DATABASES.values()}
    assert [d["database_name"] for d in DATABASES.values()] == [server.DATABASE_NAME]
    for name, dataset in DATASETS.items():
        assert dataset["database_uuid"] in database_uuids, name
        assert dataset["schema"] == "mart", name
    for name, chart in CHARTS.items():
        assert chart["dataset_uuid"] in DATASET_BY_UUID, "%s: unknown dataset %s" % (name, chart["dataset_uuid"])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_columns_and_metrics_exist_in_the_ddl(name):
    dataset = DATASETS[name]
    table = source_table(dataset)
    assert table in DDL, "%s reads mart.%s, which no migration creates" % (name, table)
    ddl_columns = DDL[table]
    for column in dataset["columns"]:
        column_name = column["column_name"]
        assert column_name in ddl_columns, "%s: column %s is not in mart.%s (%s)" % (
            name, column_name, table, ", ".join(ddl_columns))
        assert column["type"] == ddl_columns[column_name], "%s.%s: type %s, DDL says %s" % (
            name, column_name, column["type"], ddl_columns[column_name])
        assert column["is_dttm"] == (ddl_columns[column_name] == "DATE"), name + "." + column_name
    assert dataset["main_dttm_col"] in ddl_columns
    listed = {c["column_name"] for c in dataset["columns"]}
    for metric in dataset["metrics"]:
        unknown = identifiers(metric["expression"]) - listed
        assert not unknown, "%s: metric %s uses %s, not columns of the dataset" % (name, metric["metric_name"], unknown)
    if dataset.get("sql"):
        unknown = identifiers(dataset["sql"]) - set(ddl_columns) - {table}
        assert not unknown, "%s: SQL uses %s, not columns of mart.%s" % (name, unknown, table)


def _params_columns(params):
    columns = []
    for key in ("groupby", "x_axis"):
        value = params.get(key)
        if isinstance(value, str):
            columns.append(value)
        elif value:
            columns.extend(value)
    return columns


def _params_metrics(params):
    metrics = list(params.get("metrics") or [])
    if params.get("metric"):
        metrics.append(params["metric"])
    return metrics


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_uses_its_dataset_and_saves_a_matching_query(name):
    chart = CHARTS[name]
    dataset = DATASET_BY_UUID[chart["dataset_uuid"]]
    columns = {c["column_name"] for c in dataset["columns"]}
    metrics = {m["metric_name"] for m in dataset["metrics"]}
    params = chart["params"]
    assert params["viz_type"] == chart["viz_type"]
    assert set(_params_columns(params)) <= columns, name
    assert set(_params_metrics(params)) <= metrics, name
    assert params.get("metrics") or params.get("metric"), "%s shows no metric" % name
    for adhoc in params.get("adhoc_filters", []):
        assert adhoc["expressionType"] == "SIMPLE" and adhoc["subject"] in columns, name

    context = json.loads(chart["query_context"])
    assert context["form_data"] == params, "%s: query_context.form_data differs from params" % name
    (query,) = context["queries"]
    assert sorted(query["columns"]) == sorted(_params_columns(params)), name
    assert sorted(query["metrics"]) == sorted(_params_metrics(params)), name
    assert [f["col"] for f in query["filters"]] == [a["subject"] for a in params.get("adhoc_filters", [])], name
    for column, _ascending in query["orderby"]:
        assert column in metrics | columns, name
    if chart["viz_type"] in SINGLE_METRIC:
        assert query["metrics"] == [params["metric"]], name


def test_every_chart_is_on_a_dashboard_and_every_slug_is_served():
    placed = {}
    for name, dashboard in DASHBOARDS.items():
        position = dashboard["position"]
        assert position["ROOT_ID"]["children"] == ["GRID_ID"], name
        for node_id, node in position.items():
            if node_id == "DASHBOARD_VERSION_KEY":
                continue
            assert node["id"] == node_id, name
            for child in node.get("children", []):
                assert child in position, "%s: %s has unknown child %s" % (name, node_id, child)
            if node["type"] == "CHART":
                chart_uuid = node["meta"]["uuid"]
                assert chart_uuid in CHART_BY_UUID, "%s places unknown chart %s" % (name, chart_uuid)
                assert node["meta"]["sliceName"] == CHART_BY_UUID[chart_uuid]["slice_name"]
                placed[chart_uuid] = dashboard["slug"]
    assert set(placed) == set(CHART_BY_UUID), "charts on no dashboard: %s" % (set(CHART_BY_UUID) - set(placed))
    assert sorted(d["slug"] for d in DASHBOARDS.values()) == sorted(server.DASHBOARD_SLUGS)


def test_bundle_holds_exactly_the_yaml():
    bundle = HERE / "dashboards.zip"
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        assert all(n.startswith("datapipelines_dashboards/") for n in names)
        inside = {n.split("/", 1)[1]: archive.read(n) for n in names}
    on_disk = {p.relative_to(ROOT).as_posix(): p.read_bytes() for p in ROOT.rglob("*.yaml")}
    assert inside == on_disk
    assert yaml.safe_load(inside["metadata.yaml"])["type"] == "assets"
