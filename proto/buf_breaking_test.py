"""The contracts make no breaking change against the committed baseline image.

Categories FILE and WIRE_JSON come from proto/buf.yaml. A failure names the file, the rule
and the field; proto/README.md says how to make the change compatibly (or as a new v2
package).
"""

from pathlib import Path

from tools.buf import buf_tool


def test_no_breaking_change_against_baseline():
    findings = buf_tool.breaking(Path(buf_tool.MODULE_DIR), Path(buf_tool.BASELINE_PATH))
    assert not findings, (
        f"breaking changes against {buf_tool.BASELINE_PATH}:\n"
        f"{buf_tool.format_findings(findings)}\n"
        "Make the change compatible (add a field; deprecate instead of delete) or put it in a "
        "new v2 package: see proto/README.md.")


def test_breaking_config_covers_file_and_wire_json():
    config = Path(buf_tool.MODULE_DIR, "buf.yaml").read_text(encoding="utf-8")
    breaking_section = config.split("\nbreaking:", 1)[1]
    assert "- FILE" in breaking_section and "- WIRE_JSON" in breaking_section, breaking_section
