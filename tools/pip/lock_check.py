"""Fails when a requirement lock is stale against its requirements.in (the <set>_lock_test).

Usage: lock_check.py REQUIREMENTS_IN REQUIREMENTS_LOCK UPDATE_TARGET
"""

import pathlib
import sys

from tools.pip import lock


def main(argv: list[str]) -> int:
    requirements_in, lock_file, target = argv
    issues = lock.problems(
        pathlib.Path(requirements_in).name,
        pathlib.Path(requirements_in).read_text(encoding="utf-8"),
        pathlib.Path(lock_file).read_text(encoding="utf-8"),
        target,
    )
    for issue in issues:
        print(f"STALE {lock_file}: {issue}", file=sys.stderr)
    if not issues:
        print(f"{lock_file} is fresh against {requirements_in}")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
