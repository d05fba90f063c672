"""Java classes for .proto files, compiled and jar'ed: protoc --java_out, then javac, then a jar.

Usage (from the java_proto_jar rule in java_proto.bzl):
  java_proto_jar.py --protoc P --protobuf-java JAR --output OUT.jar [--descriptor-set OUT.desc]
                    [-I ROOT ...] FILE.proto ...

The well-known types (google/protobuf/*.proto) are read from the protobuf-java jar itself, so
they always match the runtime the classes compile against. javac comes from $JAVA_HOME/bin, else
PATH. The jar is deterministic: entries sorted, fixed timestamps.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

_FIXED_TIME = (2010, 1, 1, 0, 0, 0)


def _javac() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(os.path.join(java_home, "bin", "javac"), os.X_OK):
        return os.path.join(java_home, "bin", "javac")
    found = shutil.which("javac")
    if not found:
        sys.exit("java_proto_jar: javac not found (set JAVA_HOME or install a JDK 17: apt-get install openjdk-17-jdk-headless)")
    return found


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"java_proto_jar: {what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")


def _well_known_protos(protobuf_java: pathlib.Path, into: pathlib.Path) -> None:
    with zipfile.ZipFile(protobuf_java) as jar:
        for name in jar.namelist():
            if name.startswith("google/protobuf/") and name.endswith(".proto"):
                jar.extract(name, into)


def _write_jar(classes: pathlib.Path, output: pathlib.Path) -> int:
    files = sorted(p for p in classes.rglob("*") if p.is_file())
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as jar:
        manifest = zipfile.ZipInfo("META-INF/MANIFEST.MF", _FIXED_TIME)
        jar.writestr(manifest, "Manifest-Version: 1.0\r\nCreated-By: tools/proto/java_proto_jar.py\r\n\r\n")
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(classes).as_posix(), _FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            jar.writestr(info, path.read_bytes())
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protoc", required=True)
    parser.add_argument("--protobuf-java", required=True, type=pathlib.Path)
    parser.add_argument("--output", required=True, type=pathlib.Path)
    parser.add_argument("--descriptor-set", type=pathlib.Path)
    parser.add_argument("-I", dest="roots", action="append", default=[])
    parser.add_argument("protos", nargs="+")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="java-proto-") as scratch:
        scratch_dir = pathlib.Path(scratch)
        well_known, sources, classes = (scratch_dir / d for d in ("wkt", "src", "classes"))
        for d in (well_known, sources, classes):
            d.mkdir()
        _well_known_protos(args.protobuf_java, well_known)
        protoc = [os.path.abspath(args.protoc)] + ["-I" + r for r in args.roots] + ["-I" + str(well_known)]
        protoc.append("--java_out=" + str(sources))
        if args.descriptor_set:
            protoc += ["--descriptor_set_out=" + str(args.descriptor_set), "--include_imports"]
        _run(protoc + args.protos, "protoc --java_out")
        java_files = sorted(str(p) for p in sources.rglob("*.java"))
        if not java_files:
            sys.exit("java_proto_jar: protoc generated no Java for " + " ".join(args.protos))
        _run(
            [_javac(), "-nowarn", "-encoding", "UTF-8", "--release", "17", "-proc:none",
             "-cp", str(args.protobuf_java), "-d", str(classes)] + java_files,
            "javac",
        )
        count = _write_jar(classes, args.output)
    print(f"java_proto_jar: {len(java_files)} Java sources, {count} classes -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
