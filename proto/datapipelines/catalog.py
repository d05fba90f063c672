"""Every contract message of v1, for tools that must cover all of them (demo, example tests)."""

from __future__ import annotations

from types import ModuleType

from google.protobuf.message import Message

from datapipelines.behaviour.v1 import behaviour_metric_pb2, session_summary_pb2, user_event_pb2
from datapipelines.commerce.v1 import commerce_event_pb2, mart_pb2
from datapipelines.common.v1 import funnel_pb2, money_pb2, window_pb2
from datapipelines.ingest.v1 import envelope_pb2, ingest_service_pb2
from datapipelines.iot.v1 import (
    change_source_pb2,
    device_pb2,
    device_reading_pb2,
    late_reading_pb2,
    reading_aggregate_pb2,
)

MODULES: tuple[ModuleType, ...] = (
    behaviour_metric_pb2,
    session_summary_pb2,
    user_event_pb2,
    commerce_event_pb2,
    mart_pb2,
    funnel_pb2,
    money_pb2,
    window_pb2,
    envelope_pb2,
    ingest_service_pb2,
    change_source_pb2,
    device_pb2,
    device_reading_pb2,
    late_reading_pb2,
    reading_aggregate_pb2,
)


def messages() -> list[type[Message]]:
    """Top-level message classes of every contract file, sorted by full name."""
    found = {}
    for module in MODULES:
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            found[descriptor.full_name] = getattr(module, descriptor.name)
    return [found[name] for name in sorted(found)]


def by_full_name(name: str) -> type[Message]:
    for cls in messages():
        if cls.DESCRIPTOR.full_name == name:
            return cls
    raise KeyError(f"no contract message {name!r}")
