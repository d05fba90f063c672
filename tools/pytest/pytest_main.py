"""Shared main of every py_pytest_test: runs pytest on the files Bazel passes as arguments."""

import os
import sys

import pytest


def main() -> int:
    args = ["-p", "no:cacheprovider", "-q", "-rfEsP"]  # P: what passing tests printed (timings, figures) stays in the log
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if os.environ.get("TEST_TMPDIR"):  # keep tmp_path inside the test's own directory, not /tmp
        args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):  # bazel test --test_filter=...
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    code = pytest.main(args + sys.argv[1:])
    # Exit 5 means pytest collected nothing: a test target that tests nothing is a failure.
    return 1 if code == pytest.ExitCode.NO_TESTS_COLLECTED else int(code)


if __name__ == "__main__":
    sys.exit(main())
