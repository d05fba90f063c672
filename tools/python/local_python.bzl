"""The host's python3 as Bazel's Python toolchain.

Bazel 4's default stub starts `python`, which Debian does not have, and Starlark actions run
with an empty PATH. This repository rule pins the real path of the host interpreter (resolving
pyenv-style shims), checks its version, and registers it as the toolchain so py_binary tools,
py_test and the pip repositories all use one interpreter.
"""

_PROBE = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"

def _local_python_impl(rctx):
    python = rctx.which(rctx.attr.python)
    if not python:
        fail("%s is not on PATH: install Python %s (e.g. `apt-get install python3`)" % (rctx.attr.python, rctx.attr.version))
    res = rctx.execute([python, "-c", _PROBE])
    if res.return_code != 0:
        fail("could not run %s: %s" % (python, res.stderr))
    executable, version = res.stdout.strip().split("\n")
    if version != rctx.attr.version:
        fail("%s is Python %s but this repository needs Python %s: put a %s interpreter first on PATH" % (
            executable,
            version,
            rctx.attr.version,
            rctx.attr.version,
        ))
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("defs.bzl", 'PYTHON = "%s"\nPYTHON_VERSION = "%s"\n' % (executable, version))
    rctx.file("BUILD.bazel", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3",
    interpreter_path = "{executable}",
    python_version = "PY3",
    stub_shebang = "#!/usr/bin/env python3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)

exports_files(["defs.bzl"])
""".format(executable = executable))

local_python = repository_rule(
    implementation = _local_python_impl,
    attrs = {
        "python": attr.string(default = "python3", doc = "Interpreter name looked up on PATH."),
        "version": attr.string(mandatory = True, doc = "Required major.minor version."),
    },
    environ = ["PATH"],
    local = True,
    doc = "Registers the host python3 (real path, checked version) as the Python toolchain.",
)
