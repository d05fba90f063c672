"""The generated lines checked against the contract through the generated code's json_format.

The generator writes JSON directly (fast), so before writing anything it proves on a sample that
its lines are exactly what `json_format` makes of a `datapipelines.commerce.v1.CommerceEvent`:
every line parses with unknown fields refused, and prints back to the same JSON.
"""

from __future__ import annotations

import json
from typing import Iterable, Set

from datapipelines.commerce.v1 import commerce_event_pb2
from google.protobuf import json_format

MESSAGE = commerce_event_pb2.CommerceEvent.DESCRIPTOR.full_name
PAYLOADS = frozenset(field.json_name for field in commerce_event_pb2.CommerceEvent.DESCRIPTOR.oneofs_by_name["payload"].fields)


class ContractError(ValueError):
    """A generated line is not the canonical JSON of the contract."""


def check_line(data: bytes) -> str:
    """Parse one valid line as the contract; returns the payload's JSON name."""
    text = data.decode("utf-8")
    try:
        message = json_format.Parse(text, commerce_event_pb2.CommerceEvent())
    except json_format.ParseError as err:
        raise ContractError("generated line does not parse as %s: %s\n%s" % (MESSAGE, err, text[:500])) from None
    printed = json_format.MessageToDict(message)
    if printed != json.loads(text):
        raise ContractError("generated line is not the canonical JSON of %s:\n line:    %s\n printed: %s"
                            % (MESSAGE, text[:500], json.dumps(printed)[:500]))
    payload = message.WhichOneof("payload")
    if payload is None:
        raise ContractError("generated line has no payload: %s" % text[:500])
    return commerce_event_pb2.CommerceEvent.DESCRIPTOR.fields_by_name[payload].json_name


def check_sample(lines: Iterable[bytes], limit: int = 20_000) -> Set[str]:
    """Check valid lines until every payload type was seen (or `limit` lines); returns the types seen."""
    seen: Set[str] = set()
    for count, data in enumerate(lines, start=1):
        seen.add(check_line(data))
        if seen >= PAYLOADS or count >= limit:
            break
    return seen
