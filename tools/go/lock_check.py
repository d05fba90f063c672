"""A Go tool's lock is whole and is what the binary was built from.

    lock_check.py GO_MOD GO_SUM BUILD_INFO BINARY UPDATE_TARGET

- every module go.mod requires has its go.mod hash in go.sum;
- every module compiled into the binary (`go version -m`, written by go_binary_repository) is
  the version go.mod requires, with the hash go.sum holds, and nothing is replaced;
- the binary reports the pinned version of the tool's own module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def requirements(go_mod: str) -> dict[str, str]:
    """module path -> version from the require lines of go.mod."""
    out, block = {}, False
    for raw in go_mod.splitlines():
        line = raw.split("//")[0].strip()
        if line == "require (":
            block = True
        elif block and line == ")":
            block = False
        elif block or line.startswith("require "):
            fields = line.removeprefix("require ").split()
            if len(fields) >= 2:
                out[fields[0]] = fields[1]
    return out


def sums(go_sum: str) -> dict[tuple[str, str], str]:
    """(module path, version or version/go.mod) -> h1 hash."""
    out = {}
    for number, line in enumerate(go_sum.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[2].startswith("h1:"):
            raise ValueError("go.sum:%d: malformed line %r" % (number, line))
        out[(fields[0], fields[1])] = fields[2]
    return out


def build_info(text: str) -> tuple[tuple[str, str, str], list[tuple[str, str, str]], list[str]]:
    """(the `mod` line, the `dep` lines, replacement lines) of `go version -m` output."""
    main, deps, replaced = None, [], []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] in ("mod", "dep") and len(fields) >= 3:
            entry = (fields[1], fields[2], fields[3] if len(fields) > 3 else "")
            if fields[0] == "mod":
                main = entry
            else:
                deps.append(entry)
        elif fields[0] == "=>":
            replaced.append(line.strip())
    if main is None:
        raise ValueError("build info has no `mod` line:\n" + text)
    return main, deps, replaced


def problems(go_mod: str, go_sum: str, info: str, version_output: str) -> list[str]:
    required, hashes = requirements(go_mod), sums(go_sum)
    found = []
    for path, version in sorted(required.items()):
        if (path, version + "/go.mod") not in hashes:
            found.append("go.sum has no go.mod hash for %s %s" % (path, version))
    main, deps, replaced = build_info(info)
    found += ["the binary was built with a replacement: " + line for line in replaced]
    for path, version, digest in [main] + deps:
        if required.get(path) != version:
            found.append("%s %s is compiled in, go.mod requires %s" % (path, version, required.get(path, "nothing")))
        elif hashes.get((path, version)) != digest:
            found.append("%s %s was compiled with hash %s, go.sum says %s"
                         % (path, version, digest or "(none)", hashes.get((path, version), "nothing")))
    if main[1] not in version_output.split():
        found.append("the binary reports %r, not the pinned %s %s" % (version_output.strip(), main[0], main[1]))
    return found


def main(argv) -> int:
    go_mod, go_sum, info, binary, update = argv
    version = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False, timeout=60)
    found = problems(Path(go_mod).read_text(), Path(go_sum).read_text(), Path(info).read_text(),
                     version.stdout + version.stderr)
    for problem in found:
        print("STALE: " + problem, file=sys.stderr)
    if found:
        print("fix: bazel run %s (then `bazel sync --only=<repository>` if the binary is old)" % update, file=sys.stderr)
        return 1
    main_line = build_info(Path(info).read_text())[0]
    print("ok: %s %s, %d hashes in %s" % (main_line[0], main_line[1], len(sums(Path(go_sum).read_text())), go_sum))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
