"""The job follows the contracts: its raw-line schema is CommerceEvent's JSON mapping, its enum
names are mart.proto's, and migration 0002 has a table with a column per mart.proto field."""

import re

import psycopg
import pytest
from google.protobuf.descriptor import FieldDescriptor

from datapipelines.commerce.v1 import commerce_event_pb2, mart_pb2
from datapipelines.common.v1 import funnel_pb2
from jobs.commerce.marts import contract
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)

MONEY = "datapipelines.common.v1.Money"
TIMESTAMP = "google.protobuf.Timestamp"


def json_shape(descriptor):
    """A message as contract.py spells it: JSON name -> "string" | nested dict | [nested dict]."""
    shape = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name != TIMESTAMP:
            value = json_shape(field.message_type)
        else:
            value = contract.STRING
        repeated = field.is_repeated
        shape[field.json_name] = [value] if repeated else value
    return shape


def test_raw_line_schema_is_the_commerce_event_json_mapping():
    assert contract.COMMERCE_EVENT == json_shape(commerce_event_pb2.CommerceEvent.DESCRIPTOR)


def test_every_payload_of_the_oneof_has_an_event_type():
    oneof = commerce_event_pb2.CommerceEvent.DESCRIPTOR.oneofs_by_name["payload"]
    assert sorted(contract.PAYLOADS) == sorted(field.json_name for field in oneof.fields)
    assert sorted(t for t, _ in contract.PAYLOADS.values()) == sorted(field.name for field in oneof.fields)


def enum_names(enum_type):
    return {v.number: v.name for v in enum_type.DESCRIPTOR.values if v.number != 0}


def test_enum_names_are_the_contracts():
    assert contract.FUNNEL_STAGES == enum_names(funnel_pb2.FunnelStage)
    assert contract.COHORT_PERIODS == enum_names(mart_pb2.CohortPeriod)
    assert contract.RFM_SEGMENTS == enum_names(mart_pb2.RfmSegment)
    assert set(contract.PAYMENT_STATUSES) == set(enum_names(commerce_event_pb2.PaymentStatus).values())


def table_name(message_name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", message_name).lower()


def expected_columns(descriptor):
    columns = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == MONEY:
            columns[field.name + "_amount_minor"] = "bigint"
            columns[field.name + "_currency_code"] = "text"
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == TIMESTAMP:
            columns[field.name] = "timestamp with time zone"
        elif field.type == FieldDescriptor.TYPE_ENUM or field.type == FieldDescriptor.TYPE_STRING:
            columns[field.name] = "date" if field.name.endswith("_date") else "text"
        elif field.type == FieldDescriptor.TYPE_INT64:
            columns[field.name] = "bigint"
        elif field.type == FieldDescriptor.TYPE_INT32:
            columns[field.name] = "integer"
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            columns[field.name] = "double precision"
        elif field.type == FieldDescriptor.TYPE_BOOL:
            columns[field.name] = "boolean"
        else:
            raise AssertionError("no column mapping for %s" % field.full_name)
    return columns


@pytest.mark.parametrize("message", sorted(mart_pb2.DESCRIPTOR.message_types_by_name))
def test_migration_has_a_table_per_mart_message(postgres_server, message):  # noqa: F811
    descriptor = mart_pb2.DESCRIPTOR.message_types_by_name[message]
    with psycopg.connect(postgres_server.dsn) as conn:
        actual = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'mart' "
            "AND table_name = %s", (table_name(message),)).fetchall())
    assert actual, "no table mart.%s" % table_name(message)
    for column, data_type in expected_columns(descriptor).items():
        assert actual.get(column) == data_type, "mart.%s.%s" % (table_name(message), column)


def test_app_role_may_write_the_marts(postgres_server):  # noqa: F811
    with psycopg.connect(postgres_server.app_dsn) as conn:
        conn.execute("DELETE FROM mart.daily_funnel_step WHERE event_date = '2000-01-01'")
        conn.execute("SELECT count(*) FROM mart.job_run").fetchone()
