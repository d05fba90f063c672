"""Targets that keep a locked Python requirement set honest: `<set>_lock.update` and `<set>_lock_test`."""

def pip_lock_targets(name, set_dir):
    """Declares the update target and the staleness test for one requirement set.

    Args:
      name: the set's name (`core`): targets `<name>_lock.update` and `<name>_lock_test`.
      set_dir: the package holding requirements.in and requirements_lock.txt.
    """
    update_target = "//%s:%s_lock.update" % (native.package_name(), name)

    # bazel run //third_party/python:<name>_lock.update
    native.py_binary(
        name = name + "_lock.update",
        srcs = ["//tools/pip:lock_update.py"],
        main = "//tools/pip:lock_update.py",
        args = [
            "--set-dir",
            set_dir,
            "--target",
            update_target,
        ],
        python_version = "PY3",
        deps = [
            "//tools/pip:lock",
            "@py_locktools//:pip_tools",
        ],
    )

    native.py_test(
        name = name + "_lock_test",
        size = "small",
        srcs = ["//tools/pip:lock_check.py"],
        main = "//tools/pip:lock_check.py",
        args = [
            "$(rootpath //%s:requirements.in)" % set_dir,
            "$(rootpath //%s:requirements_lock.txt)" % set_dir,
            update_target,
        ],
        data = [
            "//%s:requirements.in" % set_dir,
            "//%s:requirements_lock.txt" % set_dir,
        ],
        python_version = "PY3",
        deps = [
            "//tools/pip:lock",
            "@py_core//:packaging",
        ],
    )
