"""debian_rootfs: the images' base root file system from Debian packages (docs/adr/0018).

At fetch time the ordinary apt-get client resolves `packages` and their dependency closure from
this machine's own apt sources and downloads them; tools/oci/rootfs.py merges their contents
into one deterministic `rootfs.tar` (plus `packages.txt`, the package=version list). Both are
kept in a persistent cache outside the workspace, keyed by the package list, so a new clone or
output base reuses them without the network:
`$DP_ROOTFS_CACHE`, else `$XDG_CACHE_HOME/data-pipelines/rootfs`, else
`~/.cache/data-pipelines/rootfs`. Delete the cache folder to take in Debian updates.
"""

def _cache(rctx):
    env = rctx.os.environ
    if env.get("DP_ROOTFS_CACHE"):
        return env["DP_ROOTFS_CACHE"]
    if env.get("XDG_CACHE_HOME"):
        return env["XDG_CACHE_HOME"] + "/data-pipelines/rootfs"
    if env.get("HOME"):
        return env["HOME"] + "/.cache/data-pipelines/rootfs"
    fail("@%s: no cache folder: set DP_ROOTFS_CACHE (or HOME)" % rctx.name)

def _debian_rootfs_impl(rctx):
    if not rctx.which("apt-get") or not rctx.which("dpkg-deb"):
        fail("@%s needs apt-get and dpkg-deb (Debian or Ubuntu) to build the image base" % rctx.name)
    script = rctx.path(rctx.attr._script)
    rctx.report_progress("Debian packages for the image base: %s" % " ".join(rctx.attr.packages))
    res = rctx.execute(
        [rctx.attr.python, str(script), "--cache", _cache(rctx), "--print-folder"] +
        ["--symlink=%s=%s" % (path, rctx.attr.symlinks[path]) for path in sorted(rctx.attr.symlinks)] +
        rctx.attr.packages,
        timeout = rctx.attr.timeout,
        quiet = True,
    )
    if res.return_code != 0:
        fail("building the image base for @%s failed (exit %d):\n%s\n%s" %
             (rctx.name, res.return_code, res.stdout, res.stderr))
    folder = res.stdout.strip().splitlines()[-1]
    # Copied, not linked: the build keeps working when the cache folder is deleted later.
    for name in ("rootfs.tar", "packages.txt"):
        copy = rctx.execute(["cp", folder + "/" + name, name])
        if copy.return_code != 0:
            fail("@%s: cannot copy %s/%s: %s" % (rctx.name, folder, name, copy.stderr))
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file(
        "BUILD.bazel",
        'package(default_visibility = ["//visibility:public"])\n\nexports_files(["rootfs.tar", "packages.txt"])\n',
    )

debian_rootfs = repository_rule(
    implementation = _debian_rootfs_impl,
    attrs = {
        "packages": attr.string_list(mandatory = True, doc = "Debian packages; their dependencies come along."),
        "symlinks": attr.string_dict(doc = "Links maintainer scripts would have made: {path in the image: target}."),
        "python": attr.string(mandatory = True, doc = "Interpreter running rootfs.py (PYTHON from @local_python)."),
        "timeout": attr.int(default = 1200),
        "_script": attr.label(default = "//tools/oci:rootfs.py"),
        "_jks": attr.label(default = "//tools/oci:jks.py"),
        "_tarball": attr.label(default = "//tools/oci:tarball.py"),
    },
    environ = ["DP_ROOTFS_CACHE", "XDG_CACHE_HOME"],
    doc = "A Debian root file system as one deterministic tar, cached outside the workspace.",
)
