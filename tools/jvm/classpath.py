"""Find the jars of a maven_lock_repository (e.g. @maven_kafka) in a program's runfiles.

A py_binary or py_test that lists `@maven_kafka//:classpath` in `data` gets the jars at
`<runfiles>/maven_kafka/jars/` (and, with Bazel 4's legacy layout, also at
`<runfiles>/<workspace>/external/maven_kafka/jars/`). The runfiles root is found through
RUNFILES_DIR, TEST_SRCDIR, the main script's `<script>.runfiles` or the runfiles tree that
contains this file; `bazel run` sets neither variable, so the last two matter there.
"""

import os
import pathlib
import sys
from typing import Iterator, List, Optional

WORKSPACE_NAME = "data_pipelines"


def _runfiles_roots() -> Iterator[pathlib.Path]:
    for variable in ("RUNFILES_DIR", "TEST_SRCDIR"):
        if os.environ.get(variable):
            yield pathlib.Path(os.environ[variable])
    if sys.argv and sys.argv[0]:
        yield pathlib.Path(sys.argv[0] + ".runfiles")
    # This file sits at <runfiles>/<workspace>/tools/jvm/classpath.py inside a runfiles tree.
    for parent in pathlib.Path(os.path.abspath(__file__)).parents:
        if parent.name.endswith(".runfiles"):
            yield parent
            break
    # cwd of `bazel run` and of tests is <runfiles>/<workspace>.
    yield pathlib.Path.cwd().parent


def repository_dir(repository: str) -> Optional[pathlib.Path]:
    """The runfiles directory of an external repository, or None when it is not in runfiles."""
    for root in _runfiles_roots():
        for candidate in (root / repository, root / WORKSPACE_NAME / "external" / repository):
            if candidate.is_dir():
                return candidate
    return None


def jars(repository: str) -> List[str]:
    """Absolute paths of every jar of `repository` in runfiles, in a stable order.

    Raises FileNotFoundError with what to add when the repository is not in runfiles.
    """
    directory = repository_dir(repository)
    found = sorted((directory / "jars").glob("*.jar")) if directory else []
    if not found:
        raise FileNotFoundError(
            "no jars of @%s in this program's runfiles (searched RUNFILES_DIR, TEST_SRCDIR, "
            "%s.runfiles and the working directory): add `@%s//:classpath` to the target's data"
            % (repository, sys.argv[0] if sys.argv else "<script>", repository)
        )
    return [str(path) for path in found]
