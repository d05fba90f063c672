"""Targets that keep a locked Go tool honest: `<name>_lock.update` and `<name>_lock_test`."""

def go_binary_lock_targets(name, module_dir, package, repository):
    """Declares the update target and the lock test for one Go tool (third_party/go/<tool>/).

    Args:
      name: the tool's name (`grpcurl`): targets `<name>_lock.update` and `<name>_lock_test`.
      module_dir: the package holding go.mod, go.sum and the .go file naming the program.
      package: the program's main package, e.g. github.com/fullstorydev/grpcurl/cmd/grpcurl.
      repository: the go_binary_repository built from it, e.g. "@grpcurl".
    """
    update_target = "//%s:%s_lock.update" % (native.package_name(), name)

    # bazel run //third_party/go:<name>_lock.update [-- <version>]
    native.py_binary(
        name = name + "_lock.update",
        srcs = ["//tools/go:lock_update.py"],
        main = "//tools/go:lock_update.py",
        args = [
            "--module-dir",
            module_dir,
            "--package",
            package,
            "--target",
            update_target,
        ],
        python_version = "PY3",
    )

    native.py_test(
        name = name + "_lock_test",
        size = "small",
        srcs = ["//tools/go:lock_check.py"],
        main = "//tools/go:lock_check.py",
        args = [
            "$(rootpath //%s:go.mod)" % module_dir,
            "$(rootpath //%s:go.sum)" % module_dir,
            "$(rootpath %s//:build_info.txt)" % repository,
            "$(rootpath %s//:%s)" % (repository, name),
            update_target,
        ],
        data = [
            "//%s:go.mod" % module_dir,
            "//%s:go.sum" % module_dir,
            "%s//:build_info.txt" % repository,
            "%s//:%s" % (repository, name),
        ],
        python_version = "PY3",
    )
