"""A self-contained .proto text for ClickHouse's Protobuf input format, derived from a contract.

The sink hands ClickHouse the record values exactly as they came off Kafka and lets the engine
decode them (`FORMAT Protobuf`, schema passed inline with `format_schema_source='string'`), which
is an order of magnitude faster than pulling fields out of Python message objects. ClickHouse
cannot resolve imports from an inline schema, so this module renders one file with every message
the contract reaches, generated from the compiled descriptor: field numbers and wire types are
the contract's own, so the text cannot drift from it.

Renaming is wire-neutral: messages become `datapipelines_iot_v1_ReadingAggregate` style names,
enums become `int32` (both are varints on the wire; the store maps the numbers to names).
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_SCALAR_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_ENUM: "int32",
}


def flat_name(descriptor: Descriptor) -> str:
    return descriptor.full_name.replace(".", "_")


@functools.lru_cache(maxsize=None)
def render(descriptor: Descriptor) -> str:
    """proto3 text declaring `descriptor` (as `flat_name(descriptor)`) and every message it uses."""
    blocks: dict[str, str] = {}

    def visit(message: Descriptor) -> str:
        name = flat_name(message)
        if name in blocks:
            return name
        blocks[name] = ""  # reserve: recursive types terminate
        lines = []
        for field in sorted(message.fields, key=lambda f: f.number):
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                raise ValueError(f"{message.full_name}.{field.name}: map fields are not supported by the sink")
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                type_name = visit(field.message_type)
            elif field.type in _SCALAR_TYPES:
                type_name = _SCALAR_TYPES[field.type]
            else:
                raise ValueError(f"{message.full_name}.{field.name}: unsupported field type {field.type}")
            repeated = "repeated " if _is_repeated(field) else ""
            lines.append(f"  {repeated}{type_name} {field.name} = {field.number};")
        blocks[name] = "message %s {\n%s\n}\n" % (name, "\n".join(lines))
        return name

    visit(descriptor)
    return 'syntax = "proto3";\n\n' + "\n".join(blocks[name] for name in sorted(blocks))


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5 has `is_repeated`; older ones only `label`.
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def frame(values: list[bytes]) -> bytes:
    """Values as one length-delimited stream (varint length before each), the Protobuf format's input."""
    out = bytearray()
    for value in values:
        size = len(value)
        while size >= 0x80:
            out.append((size & 0x7F) | 0x80)
            size >>= 7
        out.append(size)
        out += value
    return bytes(out)
