"""Rewrite a Maven lock from its artifacts.txt: resolve the runtime closure with mvn, hash every jar.

Run through the set's target, e.g. `bazel run //third_party/jvm:kafka_lock.update`; paths are
taken relative to the workspace (BUILD_WORKSPACE_DIRECTORY) so the lock lands in the source tree.
mvn uses the user's local repository (~/.m2, or $MAVEN_REPO_LOCAL) and settings as usual.
"""

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence
from xml.sax.saxutils import escape

from tools.jvm import maven_lock
from tools.jvm.maven_lock import ARTIFACTS_FILE, LOCK_FILE, Coordinate

# Pinned so that no plugin version lookup touches the network once it is in the local repository.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_SCOPES = ("compile", "runtime", "provided", "system", "test")


def root_pom(roots: Sequence[Coordinate]) -> str:
    dependencies = []
    for root in roots:
        classifier = "<classifier>%s</classifier>" % escape(root.classifier) if root.classifier else ""
        dependencies.append(
            "    <dependency><groupId>%s</groupId><artifactId>%s</artifactId>"
            "<version>%s</version>%s</dependency>"
            % (escape(root.group), escape(root.artifact), escape(root.version), classifier)
        )
    return (
        "<project>\n"
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>data-pipelines.lock</groupId><artifactId>roots</artifactId>"
        "<version>0</version><packaging>pom</packaging>\n"
        "  <dependencies>\n%s\n  </dependencies>\n</project>\n" % "\n".join(dependencies)
    )


def parse_dependency_list(text: str) -> Dict[Coordinate, pathlib.Path]:
    """Parse `dependency:list -DoutputAbsoluteArtifactFilename=true` output.

    Lines look like `g:a:jar[:classifier]:v:scope:/path/a-v.jar -- module m (auto)`.
    """
    resolved = {}
    for line in text.splitlines():
        fields = line.strip().split(" -- ", 1)[0].split(":")
        if len(fields) >= 6 and fields[4] in _SCOPES:
            group, artifact, kind, version = fields[:4]
            classifier, path = "", ":".join(fields[5:])
        elif len(fields) >= 7 and fields[5] in _SCOPES:
            group, artifact, kind, classifier, version = fields[:5]
            path = ":".join(fields[6:])
        else:
            continue  # the listing's title and blank lines
        if kind != "jar":
            raise ValueError("only jars can be locked, %s:%s has type %s" % (group, artifact, kind))
        resolved[Coordinate(group, artifact, version, classifier)] = pathlib.Path(path)
    return resolved


def mvn_command() -> List[str]:
    mvn = shutil.which("mvn")
    if not mvn:
        sys.exit("mvn not found on PATH: install Maven 3.8+ (Debian: apt-get install maven)")
    command = [mvn, "-B", "-q"]
    if os.environ.get("MAVEN_REPO_LOCAL"):
        command.append("-Dmaven.repo.local=" + os.environ["MAVEN_REPO_LOCAL"])
    return command


def resolve(roots: Sequence[Coordinate]) -> Dict[Coordinate, pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="jvm-lock-") as scratch:
        pom = pathlib.Path(scratch, "pom.xml")
        listing = pathlib.Path(scratch, "resolved.txt")
        pom.write_text(root_pom(roots))
        command = mvn_command() + [
            "-f", str(pom),
            DEPENDENCY_PLUGIN + ":list",
            "-DincludeScope=runtime",
            "-DoutputAbsoluteArtifactFilename=true",
            "-DoutputFile=" + str(listing),
        ]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            sys.exit("mvn could not resolve %s (exit %d):\n%s" % (
                " ".join(map(str, roots)), result.returncode, result.stdout))
        return parse_dependency_list(listing.read_text())


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set-dir", required=True, help="folder of artifacts.txt and maven_lock.txt, workspace-relative")
    parser.add_argument("--target", required=True, help="this update target, named in the lock's header")
    args = parser.parse_args(argv)

    workspace = pathlib.Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    set_dir = workspace / args.set_dir
    lock_path = set_dir / LOCK_FILE
    roots = maven_lock.parse_artifacts(
        (set_dir / ARTIFACTS_FILE).read_text(encoding="utf-8"), "%s/%s" % (args.set_dir, ARTIFACTS_FILE)
    )

    resolved = resolve(roots)
    missing = [str(root) for root in roots if root not in resolved]
    if missing:
        sys.exit("mvn resolved the roots to other versions than pinned: %s" % ", ".join(missing))
    jars = {coordinate: sha256(path) for coordinate, path in resolved.items()}
    lock_path.write_text(maven_lock.format_lock("bazel run " + args.target, roots, jars), encoding="utf-8")
    total = sum(path.stat().st_size for path in resolved.values())
    print("wrote %s/%s: %d jars, %.1f MB" % (args.set_dir, LOCK_FILE, len(jars), total / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
