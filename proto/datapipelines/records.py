"""Kafka record codec: protobuf values with their contract in headers, and dead letters.

Every record our producers write carries two headers:

    dp.schema              full protobuf message name, e.g. datapipelines.iot.v1.ReadingAggregate
    dp.schema.fingerprint  sha256 (first 16 hex digits) of the message's descriptor, nested types
                           and imports included; it changes whenever the schema does

`decode` refuses a record whose schema header names another message than the topic carries or
whose bytes do not parse, raising `MalformedRecord` with a reason a dead-letter record can keep.
A fingerprint that differs from ours is not an error (compatible evolution changes it); readers
may count it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message

from datapipelines.topics import PROTOBUF, Topic

SCHEMA_HEADER = "dp.schema"
FINGERPRINT_HEADER = "dp.schema.fingerprint"

# Dead-letter headers (the value is the original record's bytes, unchanged).
DLQ_REASON = "dp.dlq.reason"
DLQ_DETAIL = "dp.dlq.detail"
DLQ_TOPIC = "dp.dlq.source.topic"
DLQ_PARTITION = "dp.dlq.source.partition"
DLQ_OFFSET = "dp.dlq.source.offset"
DLQ_STAGE = "dp.dlq.stage"

Headers = Sequence[tuple[str, bytes]]


class MalformedRecord(ValueError):
    """A record that cannot be read as its topic's contract; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _files_closure(file: FileDescriptor) -> list[FileDescriptor]:
    seen: dict[str, FileDescriptor] = {}

    def visit(f: FileDescriptor) -> None:
        if f.name in seen:
            return
        seen[f.name] = f
        for dep in f.dependencies:
            visit(dep)

    visit(file)
    return [seen[name] for name in sorted(seen)]


@functools.lru_cache(maxsize=None)
def fingerprint(descriptor: Descriptor) -> str:
    """Stable digest of a message schema (source comments and locations excluded)."""
    digest = hashlib.sha256(descriptor.full_name.encode("utf-8"))
    for file in _files_closure(descriptor.file):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        proto.ClearField("source_code_info")
        digest.update(proto.SerializeToString(deterministic=True))
    return "sha256:" + digest.hexdigest()[:16]


def schema_headers(message: Message) -> list[tuple[str, bytes]]:
    descriptor = message.DESCRIPTOR
    return [
        (SCHEMA_HEADER, descriptor.full_name.encode("utf-8")),
        (FINGERPRINT_HEADER, fingerprint(descriptor).encode("ascii")),
    ]


@dataclass(frozen=True)
class EncodedRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(topic: Topic, message: Message) -> EncodedRecord:
    """Key, value and contract headers for `message` on `topic` (type checked)."""
    if topic.value_format != PROTOBUF:
        raise TypeError(f"topic {topic.name} does not carry protobuf values ({topic.value_format})")
    if message.DESCRIPTOR.full_name != topic.message_type:
        raise TypeError(
            f"topic {topic.name} carries {topic.message_type}, not {message.DESCRIPTOR.full_name}"
        )
    return EncodedRecord(topic.name, topic.key_of(message), message.SerializeToString(), schema_headers(message))


def header(headers: Iterable[tuple[str, bytes | str | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            if value is None:
                return None
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def decode(topic: Topic, value: bytes | None, headers: Headers | None) -> Message:
    """Parse a record of `topic`; raises MalformedRecord with the reason when it cannot."""
    cls = topic.message_class()
    expected = cls.DESCRIPTOR.full_name
    schema = header(headers, SCHEMA_HEADER)
    if schema is None:
        raise MalformedRecord("missing-schema-header", f"record on {topic.name} has no {SCHEMA_HEADER} header")
    if schema != expected:
        raise MalformedRecord("wrong-schema", f"record on {topic.name} is {schema}, expected {expected}")
    if value is None:
        raise MalformedRecord("empty-value", f"record on {topic.name} has no value (tombstone)")
    message = cls()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise MalformedRecord("undecodable-payload", f"{len(value)} bytes are not a valid {expected}: {exc}") from None
    return message


def dead_letter_headers(
    error: MalformedRecord,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    stage: str,
    original_headers: Headers | None = None,
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: the reason, where the record came from, who rejected it."""
    out = [(k, v) for k, v in (original_headers or ()) if not k.startswith("dp.dlq.")]
    out += [
        (DLQ_REASON, error.reason.encode()),
        (DLQ_DETAIL, error.detail.encode("utf-8")[:2000]),
        (DLQ_TOPIC, source_topic.encode()),
        (DLQ_STAGE, stage.encode()),
    ]
    if partition is not None:
        out.append((DLQ_PARTITION, str(partition).encode()))
    if offset is not None:
        out.append((DLQ_OFFSET, str(offset).encode()))
    return out
