"""Example values for any contract, filled field by field from the message descriptor.

Used by the demo and by tests that must cover every message without being edited each time a
field is added: strings are `<field>-<n>`, numbers are small and positive, enums take their
first real value (never `*_UNSPECIFIED`), timestamps are a fixed instant plus `n` seconds, one
member of each oneof is set, repeated fields and maps get one entry.
"""

from __future__ import annotations

from google.protobuf import descriptor
from google.protobuf.message import Message

FD = descriptor.FieldDescriptor
BASE_SECONDS = 1_767_225_600  # 2026-01-01T00:00:00Z

_NUMBERS = {
    FD.TYPE_DOUBLE: lambda n: 20.5 + n,
    FD.TYPE_FLOAT: lambda n: 1.5 + n,
    FD.TYPE_INT64: lambda n: 100 + n,
    FD.TYPE_UINT64: lambda n: 100 + n,
    FD.TYPE_INT32: lambda n: 10 + n,
    FD.TYPE_UINT32: lambda n: 10 + n,
    FD.TYPE_SINT32: lambda n: 10 + n,
    FD.TYPE_SINT64: lambda n: 100 + n,
    FD.TYPE_FIXED32: lambda n: 10 + n,
    FD.TYPE_FIXED64: lambda n: 100 + n,
    FD.TYPE_SFIXED32: lambda n: 10 + n,
    FD.TYPE_SFIXED64: lambda n: 100 + n,
}


def repeated(field: FD) -> bool:
    # protobuf 7 replaced FieldDescriptor.label with is_repeated.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FD.LABEL_REPEATED


def _scalar(field: FD, n: int):
    if field.type in _NUMBERS:
        return _NUMBERS[field.type](n)
    if field.type == FD.TYPE_BOOL:
        return True
    if field.type == FD.TYPE_STRING:
        if field.name.endswith("currency_code"):
            return "EUR"
        return f"{field.name}-{n}"
    if field.type == FD.TYPE_BYTES:
        return f"{field.name}-{n}".encode()
    if field.type == FD.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values if v.number != 0]
        return values[n % len(values)] if values else 0
    raise TypeError(f"no example for field type {field.type} ({field.full_name})")


def fill(message: Message, n: int = 1, depth: int = 0) -> Message:
    """Set every field of `message` (recursively, up to a small depth) and return it."""
    desc = message.DESCRIPTOR
    if desc.full_name == "google.protobuf.Timestamp":
        message.seconds, message.nanos = BASE_SECONDS + n, 0
        return message
    if desc.full_name == "google.protobuf.Duration":
        message.seconds = 30 + n
        return message
    if desc.full_name == "google.protobuf.Any":
        return message
    oneofs_done: set[str] = set()
    for field in desc.fields:
        oneof = field.containing_oneof
        # Proto3 `optional` fields sit in synthetic oneofs named `_<field>`; real oneofs get one member.
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in oneofs_done:
                continue
            oneofs_done.add(oneof.name)
        if field.message_type is not None and depth >= 4:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            key = _scalar(key_field, n)
            target = getattr(message, field.name)
            if value_field.message_type is not None:
                fill(target[key], n, depth + 1)
            else:
                target[key] = _scalar(value_field, n)
        elif repeated(field):
            target = getattr(message, field.name)
            if field.message_type is not None:
                fill(target.add(), n, depth + 1)
            else:
                target.append(_scalar(field, n))
        elif field.message_type is not None:
            fill(getattr(message, field.name), n, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, n))
    return message


def example(cls: type[Message], n: int = 1) -> Message:
    return fill(cls(), n)
