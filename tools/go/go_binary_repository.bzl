"""go_binary_repository: one Go program built from a committed go.mod + go.sum.

The module folder (third_party/go/<tool>/) is a tiny Go module of ours whose only file imports
the program's main package, so go.mod pins the program's version and go.sum the hash of every
module it compiles. The rule copies that folder into the repository and runs the ordinary `go`
client:

    go build -mod=readonly -trimpath -buildvcs=false -o bin/<name> <package>      (CGO_ENABLED=0)

`-mod=readonly` refuses to touch go.mod/go.sum: a stale lock fails the fetch instead of being
patched silently, and Go checks every downloaded module against go.sum. `-trimpath`,
`-buildvcs=false` and cgo off make the binary a function of the lock and the Go version only
(the same bytes from any checkout and output base).

Go's own settings are used as they are (`go env`: GOPROXY, GOMODCACHE, GOCACHE, GOFLAGS, ...).
The module cache and build cache live outside clones and output bases, so a warm machine builds
offline: a first attempt runs with GOPROXY=off; only when a module is missing from the cache does
a second attempt use the configured proxy. GOTOOLCHAIN=local: Go never downloads a newer
toolchain by itself; a Go older than go.mod's `go` line fails with what to install.

The repository holds:
  bin/<name>          the executable (exported), and :<name>, an sh_binary around it
  build_info.txt      `go version -m bin/<name>`: the module versions and hashes compiled in
"""

def _find_go(rctx):
    go = rctx.which("go")
    if go:
        return go
    goroot = rctx.os.environ.get("GOROOT", "")
    if goroot and rctx.path(goroot + "/bin/go").exists:
        return rctx.path(goroot + "/bin/go")
    return None

def _parse_version(text):
    """"go1.26.8" or "1.25.0" -> [1, 26, 8]; unknown parts are 0."""
    text = text.strip()
    if text.startswith("go"):
        text = text[2:]
    numbers = []
    for part in text.split("."):
        digits = ""
        for char in part.elems():
            if not char.isdigit():
                break
            digits += char
        numbers.append(int(digits) if digits else 0)
    for _ in range(3 - len(numbers)):
        numbers.append(0)
    return numbers[:3]

def _fields(line):
    """Whitespace-separated fields (Starlark's split needs a separator)."""
    return [field for field in line.replace("\t", " ").split(" ") if field]

def _go_mod_facts(text, package, label):
    """The `go` line and the module (and its pinned version) that provides `package`."""
    go_line = ""
    requires = {}
    in_block = False
    for raw in text.splitlines():
        line = raw.split("//")[0].strip()
        if not line:
            continue
        if line.startswith("go "):
            go_line = line[3:].strip()
        elif line == "require (":
            in_block = True
        elif in_block and line == ")":
            in_block = False
        elif in_block or line.startswith("require "):
            fields = _fields(line[len("require "):] if line.startswith("require ") else line)
            if len(fields) >= 2:
                requires[fields[0]] = fields[1]
    module = ""
    for path in requires:
        if (package == path or package.startswith(path + "/")) and len(path) > len(module):
            module = path
    if not go_line:
        fail("%s has no `go` line" % label)
    if not module:
        fail("%s requires no module providing %s; add it with the lock's update target" % (label, package))
    return struct(go = go_line, module = module, version = requires[module])

def _go_binary_repository_impl(rctx):
    go_mod_label = str(rctx.attr.go_mod)
    facts = _go_mod_facts(rctx.read(rctx.attr.go_mod), rctx.attr.package, go_mod_label)

    go = _find_go(rctx)
    if not go:
        fail(("@{name} needs Go {need} or newer to build {package} ({mod}), and `go` is not on PATH. " +
              "Run the build through ./bazelw: it fetches the release pinned in third_party/go/toolchain.txt " +
              "through the Go module proxy. See third_party/go/README.md.").format(
            name = rctx.name,
            need = facts.go,
            package = rctx.attr.package,
            mod = go_mod_label,
        ))
    res = rctx.execute([go, "env", "GOVERSION"], environment = {"GOTOOLCHAIN": "local"})
    if res.return_code != 0:
        fail("@%s: `%s env GOVERSION` failed:\n%s" % (rctx.name, go, res.stderr))
    have = res.stdout.strip()
    if _parse_version(have) < _parse_version(facts.go):
        fail(("@{name}: {go} is {have}, but {mod} needs Go {need} or newer. Run the build through ./bazelw, " +
              "which puts the release pinned in third_party/go/toolchain.txt first on PATH (see third_party/go/README.md).").format(
            name = rctx.name,
            go = go,
            have = have,
            mod = go_mod_label,
            need = facts.go,
        ))

    # Copies, not symlinks: go must never be able to write back into the source tree.
    rctx.file("src/go.mod", rctx.read(rctx.attr.go_mod))
    rctx.file("src/go.sum", rctx.read(rctx.attr.go_sum))
    for src in rctx.attr.srcs:
        rctx.file("src/" + src.name, rctx.read(src))

    output = "bin/" + rctx.attr.binary
    rctx.file("bin/README", "Built by go_binary_repository; see build_info.txt.\n")
    ldflags = "-s -w"
    if rctx.attr.version_var:
        ldflags += " -X %s=%s" % (rctx.attr.version_var, facts.version)
    command = [
        go,
        "build",
        "-mod=readonly",
        "-trimpath",
        "-buildvcs=false",
        "-ldflags=" + ldflags,
        "-o",
        str(rctx.path(output)),
        rctx.attr.package,
    ]
    environment = {
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
    }
    offline = dict(environment)
    offline["GOPROXY"] = "off"
    rctx.report_progress("go build %s@%s (offline, from the module cache)" % (facts.module, facts.version))
    res = rctx.execute(command, environment = offline, working_directory = "src", timeout = rctx.attr.timeout, quiet = True)
    if res.return_code != 0:
        rctx.report_progress("go build %s@%s (fetching modules through GOPROXY)" % (facts.module, facts.version))
        res = rctx.execute(command, environment = environment, working_directory = "src", timeout = rctx.attr.timeout, quiet = True)
    if res.return_code != 0:
        fail(("@{name}: go build {package} failed (exit {code}) with {go_mod}.\n{err}\n" +
              "A `missing go.sum entry` or `updates to go.mod needed` means the lock is stale: run its update target " +
              "(third_party/go/README.md). Otherwise check that the Go module proxy of `go env GOPROXY` is reachable.").format(
            name = rctx.name,
            package = rctx.attr.package,
            code = res.return_code,
            go_mod = go_mod_label,
            err = res.stderr,
        ))

    res = rctx.execute([go, "version", "-m", output], environment = {"GOTOOLCHAIN": "local"})
    if res.return_code != 0:
        fail("@%s: go version -m %s failed:\n%s" % (rctx.name, output, res.stderr))

    # The build info begins with the binary's own path ("bin/grpcurl: go1.26.8"); keep it relative.
    rctx.file("build_info.txt", res.stdout)
    rctx.file("BUILD.bazel", "\n".join([
        "# Generated by go_binary_repository (//tools/go:go_binary_repository.bzl) from %s. Do not edit." % go_mod_label,
        'package(default_visibility = ["//visibility:public"])',
        "",
        'exports_files(["%s", "build_info.txt"])' % output,
        "",
        "sh_binary(",
        '    name = "%s",' % rctx.attr.binary,
        '    srcs = ["%s"],' % output,
        ")",
        "",
    ]))
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)

go_binary_repository = repository_rule(
    implementation = _go_binary_repository_impl,
    doc = "Builds one Go main package with the go client from a committed go.mod + go.sum.",
    attrs = {
        "go_mod": attr.label(mandatory = True, allow_single_file = True, doc = "go.mod of the tool's module folder."),
        "go_sum": attr.label(mandatory = True, allow_single_file = True, doc = "go.sum next to it: the lock."),
        "srcs": attr.label_list(allow_files = [".go"], doc = "The module's .go files (the import of the main package)."),
        "package": attr.string(mandatory = True, doc = "The main package to build, e.g. github.com/fullstorydev/grpcurl/cmd/grpcurl."),
        "binary": attr.string(mandatory = True, doc = "Name of the executable and of its target."),
        "version_var": attr.string(doc = "A string variable set to the pinned module version with -ldflags -X, e.g. main.version."),
        "timeout": attr.int(default = 3600, doc = "Seconds one go build may take (a cold build compiles every module)."),
    },
    environ = [
        "PATH",
        "GOROOT",
        "GOPATH",
        "GOENV",
        "GOFLAGS",
        "GOMODCACHE",
        "GOCACHE",
        "GOPROXY",
        "GONOPROXY",
        "GOPRIVATE",
        "GONOSUMDB",
        "GOSUMDB",
        "GOINSECURE",
    ],
)
