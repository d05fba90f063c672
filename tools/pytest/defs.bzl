"""py_pytest_test: a py_test that runs pytest over its sources through one shared main."""

def py_pytest_test(name, srcs, deps = [], args = [], **kwargs):
    """A py_test running pytest on `srcs` (JUnit XML for Bazel, `--test_filter` as `-k`).

    Args:
      name: target name, by convention `<module>_test`.
      srcs: the test files; all are collected.
      deps: libraries the tests import; pytest is added.
      args: extra pytest arguments.
      **kwargs: passed to py_test (size, data, tags, timeout, ...).
    """
    native.py_test(
        name = name,
        srcs = srcs + ["//tools/pytest:pytest_main.py"],
        main = "//tools/pytest:pytest_main.py",
        args = args + ["$(rootpath %s)" % src for src in srcs],
        python_version = "PY3",
        deps = deps + ["@py_core//:pytest"],
        **kwargs
    )
