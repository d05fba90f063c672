"""Reproducibility of the image build.

1. Two independent Bazel builds of the same image (`:<name>` and `:<name>_rebuild`, two output
   paths) are byte-identical tarballs with the same manifest digest.
2. The layer and image writers (tools/oci), re-run outside Bazel over the image's own content,
   unpacked into another folder, listed in another order and with other file times, give the
   very same layer digests, diff_ids and manifest digest: nothing but content, path and the
   executable bit reaches the bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import random
import shutil
import tarfile

import image as image_tool
import layer as layer_tool


def _outputs(variable):
    paths = os.environ[variable].split()
    return (pathlib.Path(next(p for p in paths if p.endswith(".tar"))),
            pathlib.Path(next(p for p in paths if p.endswith(".digest"))))


def _sha(path: pathlib.Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def test_two_builds_in_two_output_paths_are_identical():
    tar_a, digest_a = _outputs("IMAGE_A")
    tar_b, digest_b = _outputs("IMAGE_B")
    assert tar_a.parent == tar_b.parent and tar_a.name != tar_b.name  # really two outputs
    assert digest_a.read_text() == digest_b.read_text()
    assert _sha(tar_a) == _sha(tar_b)


def test_writers_rerun_elsewhere_give_the_same_digests(tmp_path):
    tar_path, digest_path = _outputs("IMAGE_A")
    layout = tmp_path / "layout"
    with tarfile.open(tar_path) as tar:
        tar.extractall(layout)
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    rng = random.Random(7)

    rebuilt = []
    for number, descriptor in enumerate(manifest["layers"]):
        blob = blobs / descriptor["digest"].split(":")[1]
        out = tmp_path / ("layer%d.tar.gz" % number)
        described = tmp_path / ("layer%d.json" % number)
        if number == 0:  # the base arrives as a tar: gunzip it and compress it again
            base = tmp_path / "base.tar"
            with gzip.open(blob) as src, open(base, "wb") as dst:
                shutil.copyfileobj(src, dst)
            layer_tool.main(["tar", "--tar", str(base), "--out", str(out), "--descriptor", str(described)])
        else:  # files: unpack elsewhere, shuffle the listing, touch every file
            tree = tmp_path / ("tree%d" % number)
            lines, links = [], []
            with tarfile.open(blob, mode="r:gz") as tar:
                tar.extractall(tree)
                for member in tar.getmembers():
                    if member.isfile():
                        source = tree / member.name
                        os.utime(source, (rng.randint(1, 2 ** 31), rng.randint(1, 2 ** 31)),
                                 follow_symlinks=False)
                        lines.append("/%s\t%s\n" % (member.name, source))
                    elif member.issym():  # the engine's home links into the runfiles (JVM images)
                        links.append("/%s\t%s\n" % (member.name, member.linkname))
            rng.shuffle(lines)
            rng.shuffle(links)
            listing = tmp_path / ("layer%d.manifest" % number)
            listing.write_text("".join(lines))
            link_listing = tmp_path / ("layer%d.links" % number)
            link_listing.write_text("".join(links))
            layer_tool.main(["files", "--manifest", str(listing), "--links", str(link_listing),
                             "--out", str(out), "--descriptor", str(described)])
        result = json.loads(described.read_text())
        assert result["digest"] == descriptor["digest"], "layer %d" % number
        assert result["diff_id"] == config["rootfs"]["diff_ids"][number], "layer %d" % number
        result["comment"] = config["history"][number]["comment"]
        described.write_text(json.dumps(result))
        rebuilt += ["--layer", str(described), str(out)]

    c = config["config"]
    args = rebuilt + [
        "--repo-tag", index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "--entrypoint", json.dumps(c["Entrypoint"]),
        "--cmd", json.dumps(c["Cmd"]),
        "--user", c["User"],
        "--workdir", c["WorkingDir"],
        "--out", str(tmp_path / "image.tar"),
        "--digest-out", str(tmp_path / "image.digest"),
    ]
    for item in reversed(c["Env"]):  # order of flags must not matter either
        args += ["--env", item]
    for key, value in sorted(c["Labels"].items(), reverse=True):
        args += ["--label", "%s=%s" % (key, value)]
    for port in sorted(c.get("ExposedPorts", {})):
        args += ["--expose", port]
    image_tool.main(args)
    assert (tmp_path / "image.digest").read_text() == digest_path.read_text()
    assert _sha(tmp_path / "image.tar") == _sha(tar_path)
