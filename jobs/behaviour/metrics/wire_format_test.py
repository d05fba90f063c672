"""BehaviourMetricWire (what the job writes with) is BehaviourMetric on the wire.

The twin exists only because the Flink protobuf format cannot call protoc's renamed Java
accessors of BehaviourMetric (see behaviour_metric_wire.proto). If the contract gains, loses or
changes a field, this test fails until the twin follows.
"""

import json
import pathlib

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from datapipelines import records, topics
from datapipelines.behaviour.v1 import behaviour_metric_pb2

HERE = pathlib.Path("jobs/behaviour/metrics")
TWIN = "datapipelines.jobs.behaviour.metrics.BehaviourMetricWire"


def _twin_pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString((HERE / "contracts_java.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def _shape(descriptor):
    return {
        field.number: (field.type, field.is_repeated if hasattr(field, "is_repeated") else field.label,
                       field.message_type.full_name if field.message_type else None,
                       field.enum_type.full_name if field.enum_type else None)
        for field in descriptor.fields
    }


def test_twin_has_the_contracts_numbers_types_and_enums():
    twin = _twin_pool().FindMessageTypeByName(TWIN)
    assert _shape(twin) == _shape(behaviour_metric_pb2.BehaviourMetric.DESCRIPTOR)
    renamed = {f.number: f.name for f in twin.fields} != {
        f.number: f.name for f in behaviour_metric_pb2.BehaviourMetric.DESCRIPTOR.fields
    }
    assert renamed, "the twin only exists to rename dimension_value; drop it if names are equal"


def test_bytes_written_with_the_twin_decode_as_the_contract():
    twin_class = message_factory.GetMessageClass(_twin_pool().FindMessageTypeByName(TWIN))
    written = twin_class(
        window_kind=2, dimension=3, dimension_text="/p/1", event_count=7, unique_user_count=3,
        unique_session_count=2, version=1, window_closed=True,
    )
    written.window_start_time.seconds = 1_767_225_600
    written.window_end_time.seconds = 1_767_225_900
    read = records.decode(
        topics.BEHAVIOUR_METRICS,
        written.SerializeToString(),
        records.schema_headers(behaviour_metric_pb2.BehaviourMetric()),
    )
    assert read.dimension_value == "/p/1"
    assert read.dimension == behaviour_metric_pb2.METRIC_DIMENSION_PAGE_PATH
    assert (read.event_count, read.unique_user_count, read.unique_session_count) == (7, 3, 2)
    assert read.window_end_time.seconds - read.window_start_time.seconds == 300


def test_contracts_json_matches_the_registry():
    data = json.loads((HERE / "contracts.json").read_text())
    assert data["metrics"]["topic"] == topics.BEHAVIOUR_METRICS.name
    assert data["metrics"]["fingerprint"] == records.fingerprint(behaviour_metric_pb2.BehaviourMetric.DESCRIPTOR)
    assert data["headers"] == {"schema": records.SCHEMA_HEADER, "fingerprint": records.FINGERPRINT_HEADER}
