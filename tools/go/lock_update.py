"""Rewrites a Go tool's go.mod and go.sum (third_party/go/<tool>/) with the ordinary go client.

    bazel run //third_party/go:<tool>_lock.update                # go mod tidy (after editing go.mod)
    bazel run //third_party/go:<tool>_lock.update -- v1.9.5      # move the tool to that version
    bazel run //third_party/go:<tool>_lock.update -- latest

Go resolves through the machine's own settings (`go env GOPROXY`); nothing about the proxy
lands in the files. GOTOOLCHAIN=local: a Go too old for the new version fails instead of
downloading a toolchain.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module-dir", required=True, help="workspace-relative folder holding go.mod and go.sum")
    p.add_argument("--package", required=True, help="the main package the module pins")
    p.add_argument("--target", required=True, help="this target's label, for messages")
    p.add_argument("version", nargs="?", help="version to move the tool to (a tag, or `latest`); "
                   "without it the lock is only tidied")
    return p.parse_args(argv)


def run(command, cwd: Path, env) -> None:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run this with: bazel run " + args.target, file=sys.stderr)
        return 2
    go = shutil.which("go")
    if not go:
        print("go is not on PATH; install Go (see third_party/go/README.md) and rerun", file=sys.stderr)
        return 2
    module_dir = Path(workspace, args.module_dir)
    env = dict(os.environ, GOTOOLCHAIN="local", GOWORK="off", GOFLAGS="-mod=mod")
    try:
        if args.version:
            run([go, "get", "%s@%s" % (args.package, args.version)], module_dir, env)
        run([go, "mod", "tidy"], module_dir, env)
        run([go, "mod", "verify"], module_dir, env)
    except subprocess.CalledProcessError as err:
        print("%s failed (exit %d); go.mod/go.sum in %s may be half updated: check `git diff`"
              % (" ".join(err.cmd[:3]), err.returncode, args.module_dir), file=sys.stderr)
        return 1
    print("updated %s/go.mod and go.sum; now run: bazel test %s" % (args.module_dir, args.target.replace(
        "_lock.update", "_lock_test")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
