"""pip_lock_repository: one locked Python requirement set as an external repository.

The lock (third_party/python/<set>/requirements_lock.txt) pins every distribution with its
hashes. The rule installs it with the ordinary pip client (`--require-hashes --no-deps`, wheels
only unless a distribution is listed in `sdists`) and generates one `py_library` per
distribution, named by its normalised name: `@py_core//:grpcio_tools`.

Downloads go through a persistent wheel directory outside the workspace, so a new clone (a new
Bazel output base) installs from disk instead of the network:
`$DP_WHEELHOUSE`, else `$XDG_CACHE_HOME/data-pipelines/wheels`, else `~/.cache/data-pipelines/wheels`.
"""

def _wheelhouse(rctx):
    env = rctx.os.environ
    if env.get("DP_WHEELHOUSE"):
        return env["DP_WHEELHOUSE"]
    if env.get("XDG_CACHE_HOME"):
        return env["XDG_CACHE_HOME"] + "/data-pipelines/wheels"
    if env.get("HOME"):
        return env["HOME"] + "/.cache/data-pipelines/wheels"
    return ""

def _pip(rctx, python, args, what, quiet = True):
    cmd = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"] + args
    res = rctx.execute(cmd, timeout = rctx.attr.timeout, quiet = quiet)
    if res.return_code != 0 and what:
        fail("%s for @%s failed (exit %d):\n%s\n%s" % (what, rctx.name, res.return_code, res.stdout, res.stderr))
    return res.return_code == 0

def _pip_lock_repository_impl(rctx):
    python = rctx.attr.python
    lock = str(rctx.path(rctx.attr.lock))  # a label: editing the lock re-runs this rule
    selection = ["--no-deps", "--require-hashes", "-r", lock]
    if rctx.attr.sdists:
        selection += ["--only-binary=:all:", "--no-binary=" + ",".join(rctx.attr.sdists)]
    else:
        selection.append("--only-binary=:all:")
    install = ["install", "--no-compile", "--no-warn-script-location", "--target", "site-packages"]

    wheelhouse = _wheelhouse(rctx)
    if not wheelhouse:
        rctx.report_progress("pip install (no wheel directory: set DP_WHEELHOUSE to cache downloads)")
        _pip(rctx, python, install + selection, "pip install")
    else:
        rctx.report_progress("pip install from %s" % wheelhouse)
        offline = install + ["--no-index", "--find-links", wheelhouse] + selection
        if not _pip(rctx, python, offline, None):
            rctx.delete("site-packages")
            rctx.report_progress("pip download into %s" % wheelhouse)
            _pip(rctx, python, ["download", "--dest", wheelhouse] + selection, "pip download")
            _pip(rctx, python, offline, "pip install")

    res = rctx.execute([python, str(rctx.path(rctx.attr._gen_build)), "site-packages", "BUILD.bazel"])
    if res.return_code != 0:
        fail("generating BUILD for @%s failed:\n%s" % (rctx.name, res.stderr))
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)

pip_lock_repository = repository_rule(
    implementation = _pip_lock_repository_impl,
    attrs = {
        "lock": attr.label(mandatory = True, allow_single_file = True, doc = "requirements_lock.txt with hashes."),
        "python": attr.string(mandatory = True, doc = "Absolute interpreter path (PYTHON from @local_python)."),
        "sdists": attr.string_list(doc = "Distributions published only as source (built locally)."),
        "timeout": attr.int(default = 3600),
        "_gen_build": attr.label(default = "//tools/pip:gen_build.py"),
    },
    environ = ["DP_WHEELHOUSE", "XDG_CACHE_HOME", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"],
    doc = "Installs a hashed requirements lock; one py_library per distribution.",
)
