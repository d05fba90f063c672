"""The committed baseline describes exactly the current contracts.

buf_breaking_test lets additive changes through; this test then fails until the baseline is
updated, so the next change is checked against what was actually released. Images are
compared as file descriptors, not bytes, so buf's JSON layout does not matter.
"""

import os
from pathlib import Path

from tools.buf import buf_tool


def test_baseline_matches_current_contracts():
    fresh_path = Path(os.environ["TEST_TMPDIR"], "fresh.json")
    buf_tool.build_image(Path(buf_tool.MODULE_DIR), fresh_path)
    baseline = Path(buf_tool.BASELINE_PATH).read_text(encoding="utf-8")
    differences = buf_tool.image_differences(baseline, fresh_path.read_text(encoding="utf-8"))
    assert not differences, (
        f"{buf_tool.BASELINE_PATH} is stale ({'; '.join(differences)}).\n"
        f"Run: {buf_tool.UPDATE_COMMAND}\n"
        "If a file shows as removed although it still exists, it is missing from the "
        "`protos` filegroup of its proto/datapipelines/<domain>/v1/BUILD.bazel.")


def test_baseline_is_in_committed_layout():
    text = Path(buf_tool.BASELINE_PATH).read_text(encoding="utf-8")
    assert text == buf_tool.format_image(text), (
        f"{buf_tool.BASELINE_PATH} was edited by hand or written by another tool; "
        f"run: {buf_tool.UPDATE_COMMAND}")
