"""Rewrites the committed schema baseline from the .proto files in the source tree.

Run: bazel run //proto:baseline.update

Only run it after `bazel test //proto:buf_breaking_test` passes, or on purpose when a breaking
change was agreed in review: the baseline is what later changes are checked against.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tools.buf import buf_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buf", required=True, help="path of the buf binary (runfiles-relative)")
    args = parser.parse_args(argv)
    buf = buf_tool.buf_binary(args.buf)

    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("BUILD_WORKSPACE_DIRECTORY is not set: run this with " + buf_tool.UPDATE_COMMAND,
              file=sys.stderr)
        return 2
    module = Path(workspace, buf_tool.MODULE_DIR)
    baseline = Path(workspace, buf_tool.BASELINE_PATH)

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp, "image.json")
        buf_tool.build_image(module, image, buf)
        fresh = buf_tool.format_image(image.read_text(encoding="utf-8"))

    old = baseline.read_text(encoding="utf-8") if baseline.exists() else '{"file": []}'
    differences = buf_tool.image_differences(old, fresh)
    baseline.parent.mkdir(parents=True, exist_ok=True)
    baseline.write_text(fresh, encoding="utf-8")
    if differences:
        print(f"updated {buf_tool.BASELINE_PATH}:")
        for line in differences:
            print("  " + line)
    else:
        print(f"{buf_tool.BASELINE_PATH} already matched the contracts (rewritten in the committed layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
