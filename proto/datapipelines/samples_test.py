"""Every contract message can be filled, serialised and parsed back unchanged."""

import pytest

from datapipelines import catalog, samples
from datapipelines.commerce.v1 import commerce_event_pb2

MESSAGES = catalog.messages()


def test_all_contract_files_are_covered():
    assert len(MESSAGES) >= 30
    packages = {cls.DESCRIPTOR.full_name.rsplit(".", 1)[0] for cls in MESSAGES}
    assert {"datapipelines.iot.v1", "datapipelines.commerce.v1", "datapipelines.behaviour.v1",
            "datapipelines.ingest.v1"} <= packages


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.DESCRIPTOR.full_name)
def test_example_round_trips(cls):
    message = samples.example(cls, 3)
    assert message.ByteSize() > 0, "the example sets no field"
    parsed = cls.FromString(message.SerializeToString())
    assert parsed == message
    # No enum is left at *_UNSPECIFIED by the example builder.
    for field, value in message.ListFields():
        if field.enum_type is not None and not samples.repeated(field):
            assert value != 0, field.full_name


def test_oneof_gets_exactly_one_member():
    event = samples.example(commerce_event_pb2.CommerceEvent)
    oneofs = [o for o in event.DESCRIPTOR.oneofs if not o.name.startswith("_")]
    assert oneofs, "CommerceEvent has a payload oneof"
    for oneof in oneofs:
        assert event.WhichOneof(oneof.name) is not None
