"""Targets that keep a Maven lock honest: `<set>_lock.update` and `<set>_lock_test`."""

def maven_lock_targets(name, set_dir):
    """Declares the update target and the staleness test for one JVM artifact set.

    Args:
      name: the set's name (`kafka`): targets `<name>_lock.update` and `<name>_lock_test`.
      set_dir: the package holding artifacts.txt and maven_lock.txt.
    """
    update_target = "//%s:%s_lock.update" % (native.package_name(), name)

    # bazel run //third_party/jvm:<name>_lock.update
    native.py_binary(
        name = name + "_lock.update",
        srcs = ["//tools/jvm:update_lock.py"],
        main = "//tools/jvm:update_lock.py",
        args = [
            "--set-dir",
            set_dir,
            "--target",
            update_target,
        ],
        python_version = "PY3",
        deps = ["//tools/jvm:maven_lock"],
    )

    native.py_test(
        name = name + "_lock_test",
        size = "small",
        srcs = ["//tools/jvm:lock_check.py"],
        main = "//tools/jvm:lock_check.py",
        args = [
            "$(rootpath //%s:artifacts.txt)" % set_dir,
            "$(rootpath //%s:maven_lock.txt)" % set_dir,
            update_target,
        ],
        data = [
            "//%s:artifacts.txt" % set_dir,
            "//%s:maven_lock.txt" % set_dir,
        ],
        python_version = "PY3",
        deps = ["//tools/jvm:maven_lock"],
    )
