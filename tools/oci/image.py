"""Assembles layers into an OCI image layout tarball (docker load / podman load).

    image.py --layer L1.json L1.tar.gz --layer L2.json L2.tar.gz ... \
        --repo-tag dp-ingest:latest --entrypoint '["/usr/bin/python3.11", ...]' --user 65532:65532 \
        --env PYTHONPATH=... --label org.opencontainers.image.title=ingest \
        [--stamp-file bazel-out/stable-status.txt] --out image.tar --digest-out image.digest

The tarball holds `oci-layout`, `index.json` and `blobs/sha256/*` (the OCI image layout) plus a
`manifest.json` for Docker's loader. Everything is deterministic: JSON with sorted keys and no
spaces, `created` at the epoch, tar entries sorted with mtime 0. The same layers and settings
give the same manifest digest (written to --digest-out), on any machine, in any output path.

The git revision label comes only from a stamp file (Bazel's stable-status.txt, written by
--workspace_status_command under --stamp); without one the label says "unstamped", so
ordinary builds stay byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Tuple

import tarball

EPOCH = "1970-01-01T00:00:00Z"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
REVISION_LABEL = "org.opencontainers.image.revision"
# stable-status.txt keys (tools/workspace_status.sh) -> labels
STAMPED_LABELS = {
    "STABLE_GIT_COMMIT": REVISION_LABEL,
    "STABLE_GIT_TREE_STATE": "io.datapipelines.git.tree-state",
}


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def read_stamp(path: str) -> Dict[str, str]:
    values = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            key, _, value = line.rstrip("\n").partition(" ")
            if key:
                values[key] = value
    return values


def key_values(pairs: List[str], what: str) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit("--%s %r: want KEY=VALUE" % (what, pair))
        out[key] = value
    return out


def build(args) -> Tuple[bytes, Dict[str, bytes], List[Tuple[dict, str]]]:
    layers = []
    for descriptor_path, blob_path in args.layer:
        with open(descriptor_path, encoding="utf-8") as f:
            layers.append((json.load(f), blob_path))
    labels = key_values(args.label, "label")
    labels[REVISION_LABEL] = "unstamped"
    if args.stamp_file:
        stamp = read_stamp(args.stamp_file)
        for key, label in STAMPED_LABELS.items():
            if stamp.get(key):
                labels[label] = stamp[key]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH,
        "config": {
            "User": args.user,
            "Env": ["%s=%s" % item for item in sorted(key_values(args.env, "env").items())],
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
            "WorkingDir": args.workdir,
            "Labels": labels,
            "ExposedPorts": {port: {} for port in args.expose},
        },
        "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d, _ in layers]},
        "history": [{"created": EPOCH, "created_by": "bazel (tools/oci)", "comment": d.get("comment", "")}
                    for d, _ in layers],
    }
    if not config["config"]["ExposedPorts"]:
        del config["config"]["ExposedPorts"]
    config_bytes = canonical(config)
    config_digest = tarball.hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": "sha256:" + config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER, "digest": d["digest"], "size": d["size"]} for d, _ in layers],
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = tarball.hashlib.sha256(manifest_bytes).hexdigest()
    name, _, tag = args.repo_tag.rpartition(":")
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{
            "mediaType": MANIFEST,
            "digest": "sha256:" + manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {
                "io.containerd.image.name": args.repo_tag,
                "org.opencontainers.image.ref.name": tag or "latest",
            },
        }],
    }
    docker = [{
        "Config": "blobs/sha256/" + config_digest,
        "RepoTags": [args.repo_tag],
        "Layers": ["blobs/sha256/" + d["digest"].split(":", 1)[1] for d, _ in layers],
    }]
    small = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
        "manifest.json": canonical(docker),
        "blobs/sha256/" + config_digest: config_bytes,
        "blobs/sha256/" + manifest_digest: manifest_bytes,
    }
    return "sha256:" + manifest_digest, small, layers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", nargs=2, action="append", default=[], metavar=("DESCRIPTOR", "BLOB"),
                        help="a layer, bottom first: its descriptor JSON (layer.py) and blob")
    parser.add_argument("--repo-tag", required=True, help="name:tag docker/podman give the loaded image")
    parser.add_argument("--entrypoint", required=True, help="JSON list")
    parser.add_argument("--cmd", default="[]", help="JSON list (default arguments)")
    parser.add_argument("--user", required=True, help="uid:gid the container runs as")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--expose", action="append", default=[], help="PORT/tcp")
    parser.add_argument("--stamp-file", help="Bazel's stable-status.txt (only with --stamp)")
    parser.add_argument("--out", required=True, help="the OCI layout tarball")
    parser.add_argument("--digest-out", required=True, help="file to receive the manifest digest")
    args = parser.parse_args(argv)
    if not args.layer:
        parser.error("at least one --layer is needed")
    digest, small, layers = build(args)
    entries = [tarball.Entry(path, data=data) for path, data in small.items()]
    for descriptor, blob in layers:
        entries.append(tarball.Entry("blobs/sha256/" + descriptor["digest"].split(":", 1)[1], source=blob))
    with open(args.out, "wb") as out:
        tarball.write_tar(entries, out)
    with open(args.digest_out, "w", encoding="utf-8") as out:
        out.write(digest + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
