"""Fails when a Maven lock is stale against its artifacts.txt (the <set>_lock_test).

Usage: lock_check.py ARTIFACTS_TXT MAVEN_LOCK_TXT UPDATE_TARGET

Offline and quick: the header must name the update command, the lock's recorded roots must be
exactly the pinned roots, every root must be locked at its pinned version, and no artifact may
be locked twice. Jar contents are checked by the repository rule, not here.
"""

import pathlib
import sys

from tools.jvm import maven_lock


def main(argv) -> int:
    artifacts_file, lock_file, target = argv
    try:
        roots = maven_lock.parse_artifacts(pathlib.Path(artifacts_file).read_text(encoding="utf-8"), artifacts_file)
        lock = maven_lock.parse_lock(pathlib.Path(lock_file).read_text(encoding="utf-8"), lock_file)
        issues = maven_lock.stale_reasons(roots, lock, "bazel run " + target)
    except ValueError as err:
        issues = [str(err)]
    for issue in issues:
        print("STALE %s: %s" % (lock_file, issue), file=sys.stderr)
    if issues:
        print("fix: bazel run %s" % target, file=sys.stderr)
        return 1
    print("%s is fresh against %s (%d jars)" % (lock_file, artifacts_file, len(lock.jars)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
