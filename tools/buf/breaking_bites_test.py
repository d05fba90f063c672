"""The breaking-change check bites: known-bad edits to a copy of the contracts fail it.

Each case copies proto/ to a temporary directory, makes one edit, runs `buf breaking` against
the committed baseline and asserts which rules fire. Without this, a misconfigured buf.yaml or
an empty baseline would let every change through while buf_breaking_test stays green.
"""

import shutil
from pathlib import Path
from typing import Set

import pytest

from tools.buf import buf_tool

READING = "datapipelines/iot/v1/device_reading.proto"
AGGREGATE = "datapipelines/iot/v1/reading_aggregate.proto"
MONEY = "datapipelines/common/v1/money.proto"
CHANGE_SOURCE = "datapipelines/iot/v1/change_source.proto"


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    """A writable copy of the buf module (runfiles are read-only symlinks)."""
    copy = tmp_path / "proto"
    shutil.copytree(buf_tool.MODULE_DIR, copy, symlinks=False,
                    ignore=shutil.ignore_patterns("baseline", "*.py", "BUILD.bazel"))
    return copy


def edit(module: Path, relpath: str, old: str, new: str) -> None:
    path = module / relpath
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{relpath} no longer contains {old!r} exactly once; update this test"
    path.write_text(text.replace(old, new), encoding="utf-8")


def breaking_rules(module: Path) -> Set[str]:
    """Runs buf breaking against the committed baseline; returns the rule ids that fired."""
    findings = buf_tool.breaking(module, Path(buf_tool.BASELINE_PATH).resolve())
    return {finding["type"] for finding in findings}


def test_unchanged_copy_passes(contracts):
    assert breaking_rules(contracts) == set()


def test_additive_field_passes(contracts):
    edit(contracts, READING, "  google.protobuf.Timestamp ingest_time = 12;\n",
         "  google.protobuf.Timestamp ingest_time = 12;\n  // A new field.\n  string gateway_id = 13;\n")
    assert breaking_rules(contracts) == set()


def test_deleting_a_field_without_reserved_fails(contracts):
    edit(contracts, AGGREGATE, "  int64 count = 1;\n", "")
    rules = breaking_rules(contracts)
    assert "FIELD_NO_DELETE" in rules, rules


def test_deleting_a_field_with_reserved_still_breaks_generated_code(contracts):
    # `reserved` keeps the wire format safe (no WIRE rule fires) but generated code loses an
    # accessor, which FILE reports: deleting is for a v2 package, v1 deprecates instead.
    edit(contracts, AGGREGATE, "  int64 count = 1;\n", '  reserved 1;\n  reserved "count";\n')
    assert breaking_rules(contracts) == {"FIELD_NO_DELETE"}


def test_changing_a_field_type_fails(contracts):
    edit(contracts, READING, "optional double temperature_celsius = 4;",
         "optional float temperature_celsius = 4;")
    rules = breaking_rules(contracts)
    assert "FIELD_SAME_TYPE" in rules, rules


def test_renaming_a_field_fails_for_json(contracts):
    # Same number, so binary readers would not notice; the raw commerce logs are JSON.
    edit(contracts, MONEY, "string currency_code = 1;", "string currency = 1;")
    rules = breaking_rules(contracts)
    assert {"FIELD_SAME_NAME", "FIELD_SAME_JSON_NAME"} <= rules, rules


def test_renumbering_an_enum_value_fails(contracts):
    edit(contracts, CHANGE_SOURCE,
         "CHANGE_OPERATION_DELETE = 3;", "CHANGE_OPERATION_DELETE = 7;")
    rules = breaking_rules(contracts)
    assert rules & {"ENUM_VALUE_NO_DELETE", "ENUM_VALUE_SAME_NAME"}, rules
