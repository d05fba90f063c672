import json
import pathlib
import re

import pytest

from datapipelines import topics
from deploy.connect import connectors
from deploy.connect.connectors import PostgresSource

SOURCE = PostgresSource(host="127.0.0.1", port="5432", database="datapipelines", user="dp_cdc", password="pw")


def test_committed_template_is_current():
    committed = pathlib.Path(connectors.TEMPLATE_FILE).read_text(encoding="utf-8")
    assert committed == connectors.render_template(), (
        "%s is stale: run %s" % (connectors.TEMPLATE_FILE, connectors.UPDATE_COMMAND))


def test_routes_the_table_topic_to_the_registry_topic():
    config = connectors.iot_readings_cdc(SOURCE)
    table_topic = "%s.%s" % (config["topic.prefix"], config["table.include.list"])
    # RegexRouter matches the whole topic name (Java's Matcher.matches); Python's fullmatch agrees here.
    assert re.fullmatch(config["transforms.route.regex"], table_topic)
    assert not re.fullmatch(config["transforms.route.regex"], "iotXpublicXreadings")
    assert config["transforms.route.replacement"] == topics.IOT_CDC_READINGS.name


def test_heartbeat_topic_is_the_registry_topic():
    config = connectors.iot_readings_cdc(SOURCE)
    assert "%s.%s" % (config["topic.heartbeat.prefix"], config["topic.prefix"]) == topics.DEBEZIUM_HEARTBEAT.name


def test_the_settings_consumers_rely_on():
    config = connectors.iot_readings_cdc(SOURCE)
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["plugin.name"] == "pgoutput"
    assert config["publication.name"] == "dp_iot_publication"
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["slot.name"] == "dp_iot_slot"
    assert config["snapshot.mode"] == "initial"
    assert config["message.key.columns"] == "public.readings:site_id"
    assert config["tombstones.on.delete"] == "false"
    assert config["decimal.handling.mode"] == "double"
    assert config["value.converter.schemas.enable"] == "false"
    assert config["exactly.once.support"] == "required"
    assert "exactly.once.support" not in connectors.iot_readings_cdc(SOURCE, exactly_once=False)
    assert all(isinstance(value, str) for value in config.values())


def test_no_topic_name_is_spelled_in_the_builder():
    text = pathlib.Path("deploy/connect/connectors.py").read_text(encoding="utf-8")
    for topic in topics.ALL:
        assert topic.name not in text


def test_source_from_dsn():
    source = PostgresSource.from_dsn("host=127.0.0.1 port=15432 dbname=datapipelines user=dp_cdc password=s3cret")
    assert source == PostgresSource("127.0.0.1", "15432", "datapipelines", "dp_cdc", "s3cret")
    uri = PostgresSource.from_dsn("postgresql://dp_cdc:pw@127.0.0.1:5433/datapipelines")
    assert (uri.port, uri.user, uri.password) == ("5433", "dp_cdc", "pw")
    assert PostgresSource.from_dsn("host=h dbname=d user=u", password="${env:PW}").password == "${env:PW}"
    with pytest.raises(ValueError, match="Unix socket"):
        PostgresSource.from_dsn("host=/tmp/run dbname=d user=u password=p")
    with pytest.raises(ValueError, match="no password"):
        PostgresSource.from_dsn("host=127.0.0.1 dbname=d user=u")


def test_template_has_placeholders_not_secrets():
    document = json.loads(connectors.render_template())
    assert document["name"] == connectors.IOT_READINGS_CDC
    assert document["config"]["database.password"] == "${postgres.password}"
