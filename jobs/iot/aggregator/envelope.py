"""Debezium PostgreSQL change events of public.readings, decoded into plain tuples (pure).

The connector writes JSON without schemas (value.converter.schemas.enable=false), so a record
value is the bare envelope:

    {"before": {row}|null, "after": {row}|null,
     "source": {"version", "connector", "name", "ts_ms", "snapshot", "db", "sequence",
                "schema", "table", "txId", "lsn", "xmin", ...},
     "op": "c"|"r"|"u"|"d", "ts_ms": ..., "transaction": null, ...}

`op` "c" (insert) and "r" (snapshot read) carry `after`; "u" carries `before` and `after`
(REPLICA IDENTITY FULL gives the whole old row); "d" carries `before`. `source.lsn` is the
PostgreSQL log position of the change, `source.ts_ms` the commit time, the envelope `ts_ms`
when the connector processed it. `reading_time` (timestamptz) arrives as an ISO-8601 UTC string
(io.debezium.time.ZonedTimestamp), e.g. "2026-01-01T00:00:00.123456Z".

A decoded change is a plain tuple (the hot path builds hundreds of thousands per second; a
class instance per record would cost more than the aggregation). Field positions are the
C_* constants below. Anything that is not a valid change of the readings table raises
`records.MalformedRecord` with a stable reason code, for the dead-letter topic:

    undecodable-payload  not UTF-8 JSON
    invalid-envelope     not a Debezium envelope (no/unknown op, row or source block missing)
    missing-field        a required column is missing or null
    invalid-field        a column has the wrong type or an impossible value
    unexpected-table     the change is for another table

`decode_batch` parses a whole consumer batch with Arrow's JSON reader (one C++ pass, about
twice as fast as json.loads here) and falls back to `decode` record by record whenever Arrow
refuses the batch or a row does not validate, so both paths give the same results and the
errors always come from `decode`.
"""

from __future__ import annotations

import datetime
import io
import json
from typing import Sequence

from datapipelines.records import MalformedRecord

DEFAULT_TABLE = "readings"

# Positions in a change tuple.
C_OP = 0  # "c", "r", "u" or "d"
C_ID = 1  # reading_id (int)
C_DEVICE = 2  # device_id
C_SITE = 3  # site_id
C_TIME = 4  # reading_time, microseconds since the epoch (UTC): the event time
C_TEMPERATURE = 5  # the four metrics: float or None
C_HUMIDITY = 6
C_PRESSURE = 7
C_BATTERY = 8
C_FIRMWARE = 9  # firmware_version
C_LSN = 10  # source.lsn (int, 0 when absent)
C_TX_ID = 11  # source.txId (int or None)
C_COMMIT_MS = 12  # source.ts_ms (int or None)
C_CAPTURE_MS = 13  # envelope ts_ms (int or None)
C_BEFORE_TIME = 14  # updates: the old row's reading_time in microseconds (or None)
C_CONNECTOR = 15  # source.name (the connector's topic.prefix)
C_DATABASE = 16  # source.db
C_SCHEMA = 17  # source.schema
C_TABLE = 18  # source.table

METRICS = ("temperature_celsius", "humidity_percent", "pressure_hpa", "battery_percent")
METRIC_POSITIONS = (C_TEMPERATURE, C_HUMIDITY, C_PRESSURE, C_BATTERY)

OPERATIONS = ("c", "r", "u", "d")

_MAX_U64 = (1 << 64) - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_second_cache: dict[str, int] = {}  # 'YYYY-MM-DDTHH:MM:SS' -> microseconds
# Microseconds per unit of a fraction with 1..6 digits.
_FRACTION_SCALE = (0, 100_000, 10_000, 1_000, 100, 10, 1)


def _bad(reason: str, detail: str) -> MalformedRecord:
    return MalformedRecord(reason, detail)


def _second_us(prefix: str) -> int:
    """'YYYY-MM-DDTHH:MM:SS' (UTC) in microseconds since the epoch; ValueError if it is not one."""
    if not (prefix.isascii() and prefix[4] == "-" and prefix[7] == "-" and prefix[10] == "T" and prefix[13] == ":"
            and prefix[16] == ":" and prefix[17:19].isdigit()):
        raise ValueError(prefix)
    moment = datetime.datetime.strptime(prefix, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    value = (moment - _EPOCH) // datetime.timedelta(microseconds=1)
    if len(_second_cache) > 200_000:
        _second_cache.clear()
    _second_cache[prefix] = value
    return value


def parse_time_us(text, field: str = "reading_time") -> int:
    """An ISO-8601 timestamp with an offset (Debezium ZonedTimestamp) in microseconds since the epoch.

    Fractions beyond microseconds are truncated (PostgreSQL keeps microseconds). Raises
    MalformedRecord("invalid-field") for anything else, including a time without an offset.
    """
    # Fast path: "YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z", what Debezium writes for UTC values; the
    # seconds prefix is validated once and cached (a batch holds many readings per second).
    if text.__class__ is str and len(text) >= 20 and text[-1] == "Z":
        base = _second_cache.get(text[:19])
        if base is None:
            try:
                base = _second_us(text[:19])
            except ValueError:
                base = None
        if base is not None:
            if len(text) == 20:
                return base
            if text[19] == ".":
                digits = text[20:-1]
                fraction = digits[:6]
                rest = digits[6:]
                if fraction.isdigit() and fraction.isascii() and (not rest or (rest.isdigit() and rest.isascii()
                                                                               and len(rest) <= 3)):
                    return base + int(fraction) * _FRACTION_SCALE[len(fraction)]
    if text.__class__ is not str:
        if text is None:
            raise _bad("missing-field", f"{field} is missing or null")
        raise _bad("invalid-field", f"{field} is a {type(text).__name__}, expected an ISO-8601 string")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise _bad("invalid-field", f"{field} {text!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        raise _bad("invalid-field", f"{field} {text!r} has no UTC offset")
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


def _metric(name: str, value):
    if value.__class__ is float:
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value
        raise _bad("invalid-field", f"{name} is {value!r}, expected a finite number")
    if value.__class__ is int:
        try:
            return float(value)
        except OverflowError:
            raise _bad("invalid-field", f"{name} is out of the range of a double") from None
    raise _bad("invalid-field", f"{name} is a {type(value).__name__}, expected a number or null")


def _optional_int(name: str, value, low: int = 0, high: int = _MAX_U64):
    if value is None:
        return None
    if value.__class__ is not int or not low <= value <= high:
        raise _bad("invalid-field", f"{name} is {value!r}, expected an integer in [{low}, {high}]")
    return value


def _text(name: str, value, required: bool = True) -> str:
    if value.__class__ is str and (value or not required):
        return value
    if value is None:
        if required:
            raise _bad("missing-field", f"{name} is missing or null")
        return ""
    if value.__class__ is str:
        raise _bad("invalid-field", f"{name} is empty")
    raise _bad("invalid-field", f"{name} is a {type(value).__name__}, expected a string")


def build(op, reading_id, device_id, site_id, reading_time, temperature, humidity, pressure, battery,
          firmware, lsn, tx_id, commit_ms, capture_ms, before_time, connector, database, schema, table,
          expected_table: str) -> tuple:
    """Validates one change's values (from either decoder) and returns its change tuple."""
    row = "before" if op == "d" else "after"
    if reading_id.__class__ is not int or reading_id < 0:
        if reading_id is None:
            raise _bad("missing-field", f"{row}.reading_id is missing or null")
        raise _bad("invalid-field", f"{row}.reading_id is {reading_id!r}, expected a non-negative integer")
    if device_id.__class__ is not str or not device_id:
        _text(f"{row}.device_id", device_id)
    if site_id.__class__ is not str or not site_id:
        _text(f"{row}.site_id", site_id)
    time_us = parse_time_us(reading_time, f"{row}.reading_time")
    # `v - v != 0.0` is true for nan and ±inf: one test for "not a finite float".
    if temperature is not None and (temperature.__class__ is not float or temperature - temperature != 0.0):
        temperature = _metric(f"{row}.temperature_celsius", temperature)
    if humidity is not None and (humidity.__class__ is not float or humidity - humidity != 0.0):
        humidity = _metric(f"{row}.humidity_percent", humidity)
    if pressure is not None and (pressure.__class__ is not float or pressure - pressure != 0.0):
        pressure = _metric(f"{row}.pressure_hpa", pressure)
    if battery is not None and (battery.__class__ is not float or battery - battery != 0.0):
        battery = _metric(f"{row}.battery_percent", battery)
    if firmware.__class__ is not str:
        firmware = _text(f"{row}.firmware_version", firmware, required=False)
    if lsn.__class__ is not int or lsn < 0:
        lsn = _optional_int("source.lsn", lsn) or 0
    if tx_id is not None:
        tx_id = _optional_int("source.txId", tx_id)
    if commit_ms is not None and commit_ms.__class__ is not int:
        commit_ms = _optional_int("source.ts_ms", commit_ms, -(1 << 62), 1 << 62)
    if capture_ms is not None and capture_ms.__class__ is not int:
        capture_ms = _optional_int("ts_ms", capture_ms, -(1 << 62), 1 << 62)
    before_us = None
    if before_time is not None:
        try:
            before_us = parse_time_us(before_time, "before.reading_time")
        except MalformedRecord:
            before_us = None  # only used to name missed windows in late-reading reports
    if table is not None and table != expected_table:
        raise _bad("unexpected-table", f"change of table {table!r}, this topic carries {expected_table!r} only")
    return (op, reading_id, device_id, site_id, time_us, temperature, humidity, pressure, battery, firmware,
            lsn, tx_id, commit_ms, capture_ms, before_us,
            connector if connector.__class__ is str else "", database if database.__class__ is str else "",
            schema if schema.__class__ is str else "", table if table.__class__ is str else "")


def decode(value: bytes | None, table: str = DEFAULT_TABLE) -> tuple | None:
    """One record value → change tuple; None for a null value (tombstone); MalformedRecord if bad."""
    if value is None:
        return None
    try:
        envelope = json.loads(value)
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad("undecodable-payload", f"{len(value)} bytes are not UTF-8 JSON: {error}") from None
    if not isinstance(envelope, dict):
        raise _bad("invalid-envelope", f"value is a JSON {type(envelope).__name__}, expected a Debezium envelope object")
    if "payload" in envelope and "schema" in envelope and "op" not in envelope:
        raise _bad("invalid-envelope", "value has schema+payload; configure the connector with "
                                       "value.converter.schemas.enable=false")
    op = envelope.get("op")
    if op not in OPERATIONS:
        raise _bad("invalid-envelope", f"op is {op!r}, expected one of c, r, u, d")
    row_name = "before" if op == "d" else "after"
    row = envelope.get(row_name)
    if not isinstance(row, dict):
        raise _bad("invalid-envelope", f"op {op!r} needs {row_name!r} to be an object, got {type(row).__name__}")
    source = envelope.get("source")
    if not isinstance(source, dict):
        raise _bad("invalid-envelope", f"source is {type(source).__name__}, expected an object")
    before = envelope.get("before")
    before_time = before.get("reading_time") if op == "u" and isinstance(before, dict) else None
    get = row.get
    return build(op, get("reading_id"), get("device_id"), get("site_id"), get("reading_time"),
                 get("temperature_celsius"), get("humidity_percent"), get("pressure_hpa"), get("battery_percent"),
                 get("firmware_version"), source.get("lsn"), source.get("txId"), source.get("ts_ms"),
                 envelope.get("ts_ms"), before_time, source.get("name"), source.get("db"), source.get("schema"),
                 source.get("table"), table)


def decode_or_error(value: bytes | None, table: str = DEFAULT_TABLE):
    """Like `decode`, but returns the MalformedRecord instead of raising it."""
    try:
        return decode(value, table)
    except MalformedRecord as error:
        return error


_ARROW = None


def _arrow():
    """pyarrow and the explicit schema of the fields we read (loaded on first use)."""
    global _ARROW
    if _ARROW is None:
        import pyarrow
        import pyarrow.compute
        import pyarrow.json

        row = pyarrow.struct([
            ("reading_id", pyarrow.int64()),
            ("device_id", pyarrow.string()),
            ("site_id", pyarrow.string()),
            ("reading_time", pyarrow.string()),
            ("temperature_celsius", pyarrow.float64()),
            ("humidity_percent", pyarrow.float64()),
            ("pressure_hpa", pyarrow.float64()),
            ("battery_percent", pyarrow.float64()),
            ("firmware_version", pyarrow.string()),
        ])
        source = pyarrow.struct([
            ("name", pyarrow.string()),
            ("ts_ms", pyarrow.int64()),
            ("db", pyarrow.string()),
            ("schema", pyarrow.string()),
            ("table", pyarrow.string()),
            ("txId", pyarrow.int64()),
            ("lsn", pyarrow.int64()),
        ])
        schema = pyarrow.schema([("before", row), ("after", row), ("source", source),
                                 ("op", pyarrow.string()), ("ts_ms", pyarrow.int64())])
        parse = pyarrow.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        read = pyarrow.json.ReadOptions(use_threads=False, block_size=1 << 26)
        _ARROW = (pyarrow, parse, read)
    return _ARROW


_ROW_FIELDS = ("reading_id", "device_id", "site_id", "reading_time", "temperature_celsius", "humidity_percent",
               "pressure_hpa", "battery_percent", "firmware_version")


def _columns(blob: bytes, count: int):
    """Arrow's columns for `count` newline-separated envelopes, or None when Arrow refuses them."""
    pyarrow, parse, read = _arrow()
    try:
        table = pyarrow.json.read_json(io.BytesIO(blob), read_options=read, parse_options=parse)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, pyarrow.ArrowTypeError):
        return None
    if table.num_rows != count:
        return None
    table = table.combine_chunks()
    op = table.column("op").chunk(0) if table.column("op").num_chunks else pyarrow.array([None] * count, pyarrow.string())
    before = table.column("before").chunk(0)
    after = table.column("after").chunk(0)
    source = table.column("source").chunk(0)
    is_delete = pyarrow.compute.fill_null(pyarrow.compute.equal(op, "d"), False)
    rows = [pyarrow.compute.if_else(is_delete, before.field(name), after.field(name)).to_pylist() for name in _ROW_FIELDS]
    before_time = before.field("reading_time").to_pylist()
    sources = [source.field(name).to_pylist() for name in ("lsn", "txId", "ts_ms")]
    meta = [source.field(name).to_pylist() for name in ("name", "db", "schema", "table")]
    # A null `before`/`after`/`source` struct reads as null fields; validation sends those rows
    # through `decode`, which names the real problem.
    valid = [pyarrow.compute.fill_null(before.is_valid(), False).to_pylist(),
             pyarrow.compute.fill_null(after.is_valid(), False).to_pylist(),
             pyarrow.compute.fill_null(source.is_valid(), False).to_pylist()]
    return op.to_pylist(), rows, before_time, sources, table.column("ts_ms").to_pylist(), meta, valid


def decode_batch(values: Sequence[bytes | None], table: str = DEFAULT_TABLE) -> list:
    """Decodes a consumer batch: for each value a change tuple, None (null value) or a MalformedRecord."""
    out: list = [None] * len(values)
    positions = [i for i, value in enumerate(values) if value]
    if len(positions) < 64:  # Arrow's fixed cost only pays off on real batches
        for i in positions:
            out[i] = decode_or_error(values[i], table)
        for i, value in enumerate(values):
            if value is not None and not value:
                out[i] = decode_or_error(value, table)
        return out
    # JSON allows newlines only as whitespace between tokens, so replacing them keeps the meaning
    # and gives Arrow one envelope per line.
    blob = b"\n".join(values[i] if b"\n" not in values[i] else values[i].replace(b"\n", b" ") for i in positions)
    columns = _columns(blob, len(positions))
    if columns is None:
        for i in positions:
            out[i] = decode_or_error(values[i], table)
    else:
        ops, rows, before_time, (lsns, tx_ids, commits), captures, (names, dbs, schemas, tables), valid = columns
        befores, afters, sources = valid
        for j, (i, op, rid, device, site, rtime, t, h, p, b, fw, lsn, tx, commit, capture, btime, name, db, sch,
                tbl, has_before, has_after, has_source) in enumerate(zip(
                    positions, ops, *rows, lsns, tx_ids, commits, captures, before_time, names, dbs, schemas, tables,
                    befores, afters, sources)):
            if not has_source or (has_after if op != "d" else has_before) is not True or op not in OPERATIONS:
                out[i] = decode_or_error(values[i], table)
                continue
            try:
                out[i] = build(op, rid, device, site, rtime, t, h, p, b, fw, lsn, tx, commit, capture,
                               btime if op == "u" else None, name, db, sch, tbl, table)
            except MalformedRecord:
                out[i] = decode_or_error(values[i], table)
    for i, value in enumerate(values):
        if value is not None and not value:  # empty bytes: not JSON
            out[i] = decode_or_error(value, table)
    return out
