"""Write a BUILD file for a `pip install --target` tree: one py_library per distribution.

Usage: gen_build.py SITE_PACKAGES_DIR OUTPUT_BUILD_FILE

Each library lists exactly the files its RECORD names and depends on the distributions its
metadata requires (extras and distributions absent from the lock are left out). Runs inside a
repository rule, so it uses the standard library only.
"""

import email.parser
import pathlib
import re
import sys

# Bazel 4 runfiles cannot hold names with spaces or shell-special characters
# (setuptools ships "script (dev).tmpl"); such files are skipped.
SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+=@~,-]+$")
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def record_files(site: pathlib.Path, dist_info: pathlib.Path) -> list[str]:
    files = []
    for line in (dist_info / "RECORD").read_text(encoding="utf-8").splitlines():
        path = line.rsplit(",", 2)[0].strip('"')
        if not path or path.startswith("..") or "__pycache__" in path or path.endswith(".pyc"):
            continue
        if SAFE_PATH.match(path) and (site / path).is_file():
            files.append("site-packages/" + path)
    return files


def requirements(metadata) -> set[str]:
    names = set()
    for requirement in metadata.get_all("Requires-Dist") or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = REQUIREMENT_NAME.match(spec)
        if match:
            names.add(normalise(match.group(1)))
    return names


def main(site_dir: str, output: str) -> None:
    site = pathlib.Path(site_dir)
    dists = {}
    for dist_info in sorted(site.glob("*.dist-info")):
        metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text(encoding="utf-8"))
        dists[normalise(metadata["Name"])] = (record_files(site, dist_info), requirements(metadata))
    graph = {name: sorted(r for r in required if r in dists and r != name) for name, (_, required) in dists.items()}
    lines = ['package(default_visibility = ["//visibility:public"])', ""]
    for group in sorted(cycles(graph)):
        # Distributions that require each other (apache-airflow-core -> a provider ->
        # apache-airflow -> apache-airflow-core) share one library; Bazel forbids cycles.
        files = [f for name in group for f in dists[name][0]]
        deps = sorted({":" + r for name in group for r in graph[name] if r not in group})
        lines += _library(_cycle_name(group), files, deps)
    in_cycle = {name: _cycle_name(group) for group in cycles(graph) for name in group}
    for name, (files, _) in sorted(dists.items()):
        if name in in_cycle:
            lines += _library(name, [], [":" + in_cycle[name]])
        else:
            lines += _library(name, files, [":" + r for r in graph[name]])
    pathlib.Path(output).write_text("\n".join(lines), encoding="utf-8")


def _library(name: str, files: list[str], deps: list[str]) -> list[str]:
    return [
        "py_library(",
        "    name = %r," % name,
        "    srcs = %r," % [f for f in files if f.endswith(".py")],
        "    data = %r," % [f for f in files if not f.endswith(".py")],
        "    imports = [\"site-packages\"],",
        "    deps = %r," % sorted(deps),
        ")",
        "",
    ]


def _cycle_name(group: tuple) -> str:
    return "_cycle_" + group[0]


def cycles(graph: dict[str, list[str]]) -> list[tuple]:
    """The strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(tuple(sorted(group)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
