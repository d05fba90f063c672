"""Regenerate a requirement lock from its requirements.in with pip-compile (pip-tools).

    bazel run //third_party/python:core_lock.update

Writes <set>/requirements_lock.txt in the source tree: every distribution pinned with all of
its published hashes, under the header that the <set>_lock_test checks. Index URLs and
find-links are never written (this machine's pip configuration may add local ones).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

from tools.pip import lock


def compile_lock(requirements_in: pathlib.Path, output: pathlib.Path) -> None:
    from piptools.scripts.compile import cli

    args = [
        "--quiet",
        "--generate-hashes",
        "--allow-unsafe",
        "--strip-extras",
        "--no-header",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--no-emit-trusted-host",
        "--output-file",
        str(output),
        str(requirements_in),
    ]
    try:
        cli.main(args=args, prog_name="pip-compile", standalone_mode=False)
    except SystemExit as exc:  # click exits on errors even with standalone_mode off
        if exc.code:
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set-dir", required=True, help="workspace-relative folder holding requirements.in")
    parser.add_argument("--target", required=True, help="the bazel run label that regenerates this lock")
    args = parser.parse_args(argv)

    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        parser.error("run this through `bazel run`, which sets BUILD_WORKSPACE_DIRECTORY")
    set_dir = pathlib.Path(workspace, args.set_dir)
    requirements_in = set_dir / "requirements.in"
    lock_path = set_dir / "requirements_lock.txt"
    input_text = requirements_in.read_text(encoding="utf-8")

    print(f"resolving {args.set_dir}/requirements.in (pip-compile, all hashes) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = pathlib.Path(tmp, "requirements_lock.txt")
        # pip-compile resolves relative to the input; keep the input where it is.
        os.chdir(set_dir)
        compile_lock(pathlib.Path("requirements.in"), compiled)
        body = compiled.read_text(encoding="utf-8")
    text = lock.header(args.target, "requirements.in", input_text) + "\n" + body
    issues = lock.problems("requirements.in", input_text, text, args.target)
    if issues:
        print("the new lock is not usable:\n  " + "\n  ".join(issues), file=sys.stderr)
        return 1
    lock_path.write_text(text, encoding="utf-8")
    pins = lock.parse_lock(text)
    print(f"wrote {args.set_dir}/requirements_lock.txt: {len(pins)} distributions pinned", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
