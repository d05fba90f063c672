"""Writes one image layer (a deterministic tar.gz) and its descriptor (digest, size, diff_id).

    layer.py files --manifest M --out L.tar.gz --descriptor L.json
        M: one line per file, "<path in the image>\t<file to read>"; __pycache__ and .pyc dropped.
        Modes: 0755 when the file is executable, else 0644; owner root; parents 0755.
        --links K: one line per symbolic link, "<path in the image>\t<target>".
    layer.py tar --tar base.tar --out L.tar.gz --descriptor L.json
        gzips an existing deterministic tar (the Debian base built at fetch time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator, List, Tuple

import tarball


def _skipped(path: str) -> bool:
    return "/__pycache__/" in "/" + path + "/" or path.endswith((".pyc", ".pyo"))


def _pairs(listing: str, second: str) -> Iterator[Tuple[int, str, str]]:
    """(line number, path in the image without the leading slash, second column) of a listing."""
    with open(listing, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                dest, value = line.split("\t")
            except ValueError:
                raise SystemExit("%s:%d: want '<path in image>\\t<%s>', got %r" % (listing, number, second, line))
            yield number, dest.lstrip("/"), value


def entries_from_manifest(manifest: str) -> List[tarball.Entry]:
    entries = {}
    for number, dest, source in _pairs(manifest, "source file"):
        if _skipped(dest):
            continue
        if not os.path.isfile(source):
            raise SystemExit("%s:%d: %s is not a file" % (manifest, number, source))
        if dest in entries and entries[dest].source != source:
            raise SystemExit("%s:%d: %s comes from both %s and %s" % (manifest, number, dest, entries[dest].source, source))
        mode = 0o755 if os.access(source, os.X_OK) else 0o644
        entries[dest] = tarball.Entry(dest, mode=mode, source=source)
    return list(entries.values())


def entries_from_links(links: str) -> List[tarball.Entry]:
    return [tarball.Entry(dest, kind="symlink", mode=0o777, target=target)
            for _, dest, target in _pairs(links, "link target")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    files = sub.add_parser("files", help="a layer of the files listed in a manifest")
    files.add_argument("--manifest", required=True)
    files.add_argument("--links", help="symbolic links to add, one per line")
    base = sub.add_parser("tar", help="gzip an existing deterministic tar")
    base.add_argument("--tar", required=True)
    for p in (files, base):
        p.add_argument("--out", required=True, help="the layer blob (tar.gz)")
        p.add_argument("--descriptor", required=True, help="JSON: digest, size, diff_id")
        p.add_argument("--comment", default="", help="what the layer holds (image history)")
    args = parser.parse_args(argv)
    with open(args.out, "wb") as out:
        if args.command == "files":
            entries = entries_from_manifest(args.manifest)
            if args.links:
                entries += entries_from_links(args.links)
            blob = tarball.write_layer(entries, out)
        else:
            blob = tarball.compress_tar(args.tar, out)
    with open(args.descriptor, "w", encoding="utf-8") as out:
        json.dump({"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id, "comment": args.comment},
                  out, sort_keys=True)
        out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
