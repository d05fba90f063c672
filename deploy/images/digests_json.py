"""Collects the images' manifest digests into one JSON file for the cluster manifests.

    digests_json.py --out digests.json bazel-bin/deploy/images/ingest.digest ...

Writes {"<image>": "sha256:<64 hex>", ...} keyed by the image target's name, the format
deploy/k8s/images.py reads (`bazel run //deploy/k8s:render -- --digests FILE`). Other files in
the argument list (the image tarballs) are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("files", nargs="+", help="<image>.digest files (others are skipped)")
    args = parser.parse_args(argv)
    digests = {}
    for path in args.files:
        if not path.endswith(".digest"):
            continue
        with open(path, encoding="utf-8") as f:
            digest = f.read().strip()
        if not DIGEST.match(digest):
            raise SystemExit("%s: %r is not a sha256 digest" % (path, digest))
        digests[os.path.basename(path)[: -len(".digest")]] = digest
    if not digests:
        raise SystemExit("no .digest files among %s" % " ".join(args.files))
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(digests, out, indent=2, sort_keys=True)
        out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
