"""Regenerates third_party/npm/chartjs/package-lock.json from package.json.

Run: bazel run //third_party/npm/chartjs:lock.update
To move Chart.js to another version, change the version in package.json first. npm resolves from
the machine's configured registry; the .npmrc here keeps that registry out of the lock.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run this with: bazel run //third_party/npm/chartjs:lock.update", file=sys.stderr)
        return 2
    npm = shutil.which("npm")
    if not npm:
        print("npm is not on PATH; install Node.js and npm (Debian: apt-get install npm)", file=sys.stderr)
        return 2
    here = Path(workspace, "third_party/npm/chartjs")
    proc = subprocess.run([npm, "install", "--package-lock-only", "--ignore-scripts",
                           "--no-audit", "--no-fund"], cwd=here, check=False)
    if proc.returncode == 0:
        print(f"updated {here.relative_to(workspace)}/package-lock.json")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
