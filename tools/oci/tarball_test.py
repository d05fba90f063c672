"""Determinism of the tar/gzip writers, the image assembler's stamping, and the base's users and trust stores."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

import image
import layer
import rootfs
import tarball


def _bytes(entries):
    out = io.BytesIO()
    tarball.write_tar(entries, out)
    return out.getvalue()


def test_order_and_file_times_do_not_change_the_bytes(tmp_path):
    src = tmp_path / "tool.sh"
    src.write_text("#!/bin/sh\n")
    entries = [
        tarball.Entry("app/b.txt", data=b"b"),
        tarball.Entry("app/a/x.py", data=b"x"),
        tarball.Entry("app/tool.sh", mode=0o755, source=str(src)),
    ]
    first = _bytes(entries)
    os.utime(src, (12345, 67890))
    assert _bytes(list(reversed(entries))) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["app", "app/a", "app/a/x.py", "app/b.txt", "app/tool.sh"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    assert members[0].isdir() and members[0].mode == 0o755
    assert members[-1].mode == 0o755


def test_content_changes_the_bytes():
    assert _bytes([tarball.Entry("a", data=b"1")]) != _bytes([tarball.Entry("a", data=b"2")])


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../b", ""])
def test_paths_outside_the_image_are_refused(path):
    with pytest.raises(ValueError):
        tarball.Entry(path, data=b"")


def test_a_file_below_a_file_is_refused():
    with pytest.raises(ValueError, match="sits below"):
        _bytes([tarball.Entry("a", data=b""), tarball.Entry("a/b", data=b"")])


def test_layer_digests_describe_the_blob_and_the_tar_inside():
    out = io.BytesIO()
    blob = tarball.write_layer([tarball.Entry("etc/hostname", data=b"x\n")], out)
    data = out.getvalue()
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    again = io.BytesIO()
    assert tarball.write_layer([tarball.Entry("etc/hostname", data=b"x\n")], again) == blob


def test_layer_tool_drops_bytecode_and_keeps_the_executable_bit(tmp_path):
    (tmp_path / "run").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "run", 0o755)
    (tmp_path / "m.py").write_text("")
    (tmp_path / "m.pyc").write_bytes(b"")
    listing = tmp_path / "files.manifest"
    listing.write_text("/app/run\t%s\n/app/m.py\t%s\n/app/__pycache__/m.pyc\t%s\n" % (
        tmp_path / "run", tmp_path / "m.py", tmp_path / "m.pyc"))
    layer.main(["files", "--manifest", str(listing), "--out", str(tmp_path / "l.tar.gz"),
                "--descriptor", str(tmp_path / "l.json")])
    with tarfile.open(tmp_path / "l.tar.gz") as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes == {"app": 0o755, "app/m.py": 0o644, "app/run": 0o755}


def test_layer_tool_refuses_a_missing_source(tmp_path):
    listing = tmp_path / "files.manifest"
    listing.write_text("/app/x\t%s\n" % (tmp_path / "nope"))
    with pytest.raises(SystemExit, match="is not a file"):
        layer.main(["files", "--manifest", str(listing), "--out", str(tmp_path / "l"), "--descriptor", str(tmp_path / "d")])


def _image(tmp_path, name, extra=()):
    blob = tmp_path / "l.tar.gz"
    described = tmp_path / "l.json"
    if not blob.exists():
        with open(blob, "wb") as out:
            d = tarball.write_layer([tarball.Entry("app/x", data=b"x")], out)
        described.write_text(json.dumps({"digest": d.digest, "size": d.size, "diff_id": d.diff_id}))
    out = tmp_path / (name + ".tar")
    image.main(["--layer", str(described), str(blob), "--repo-tag", "dp-x:latest", "--entrypoint", '["/x"]',
                "--user", "65532:65532", "--out", str(out), "--digest-out", str(tmp_path / (name + ".digest"))]
               + list(extra))
    with tarfile.open(out) as tar:
        docker = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(docker[0]["Config"]))
    return (tmp_path / (name + ".digest")).read_text().strip(), config


def test_revision_label_only_from_a_stamp_file(tmp_path):
    plain, config = _image(tmp_path, "plain")
    assert config["config"]["Labels"]["org.opencontainers.image.revision"] == "unstamped"
    assert _image(tmp_path, "plain_again")[0] == plain
    stamp = tmp_path / "stable-status.txt"
    stamp.write_text("BUILD_USER someone\nSTABLE_GIT_COMMIT %s\nSTABLE_GIT_TREE_STATE clean\n" % ("ab" * 20))
    stamped, config = _image(tmp_path, "stamped", ["--stamp-file", str(stamp)])
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == "ab" * 20
    assert labels["io.datapipelines.git.tree-state"] == "clean"
    assert "someone" not in json.dumps(config)
    assert stamped != plain


def test_base_users_and_cache_key():
    entries = {"usr/share/ca-certificates/mozilla/b.crt": tarball.Entry("usr/share/ca-certificates/mozilla/b.crt", data=b"B"),
               "usr/share/ca-certificates/mozilla/a.crt": tarball.Entry("usr/share/ca-certificates/mozilla/a.crt", data=b"A\n")}
    rootfs.finish(entries)
    assert "nonroot:x:65532:65532:" in entries["etc/passwd"].data.decode()
    assert entries["home/nonroot"].uid == 65532 and entries["tmp"].mode == 0o1777
    assert entries["etc/ssl/certs/ca-certificates.crt"].data == b"A\nB\n"
    assert rootfs.cache_key(["b", "a"]) == rootfs.cache_key(["a", "b", "a"]) != rootfs.cache_key(["a"])


def test_java_trust_store_only_when_a_jvm_links_to_it():
    pem = b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"  # DER 30 03 02 01 01
    cert = "usr/share/ca-certificates/mozilla/Some_Root.crt"
    plain = {cert: tarball.Entry(cert, data=pem)}
    rootfs.finish(plain)
    assert "etc/ssl/certs/java/cacerts" not in plain
    link = "usr/lib/jvm/j/lib/security/cacerts"
    for target in ("/etc/ssl/certs/java/cacerts", "../../../../../../etc/ssl/certs/java/cacerts"):
        jvm = {cert: tarball.Entry(cert, data=pem), link: tarball.Entry(link, kind="symlink", target=target)}
        rootfs.finish(jvm)
        store = jvm["etc/ssl/certs/java/cacerts"].data
        assert store[:4] == b"\xfe\xed\xfe\xed" and b"debian:some_root.pem" in store
        assert store.count(b"X.509") == 1
    bad = {cert: tarball.Entry(cert, data=b"garbage\n"), link: tarball.Entry(link, kind="symlink",
                                                                             target="/etc/ssl/certs/java/cacerts")}
    with pytest.raises(SystemExit, match="Java trust store.*Some_Root.crt"):
        rootfs.finish(bad)


def test_symlinks_of_the_base_point_at_installed_files_and_change_the_key():
    entries = {"usr/lib/jvm/j/bin/java": tarball.Entry("usr/lib/jvm/j/bin/java", data=b"elf"),
               "bin/bash": tarball.Entry("bin/bash", data=b"elf")}
    links = rootfs.parse_symlinks(["/usr/bin/java=/usr/lib/jvm/j/bin/java", "bin/sh=bash"])
    rootfs.add_symlinks(entries, links)
    assert entries["usr/bin/java"].kind == "symlink" and entries["usr/bin/java"].target == "/usr/lib/jvm/j/bin/java"
    assert entries["bin/sh"].target == "bash"
    with pytest.raises(SystemExit, match="not in the unpacked packages"):
        rootfs.add_symlinks(entries, {"usr/bin/python3": "python3.11"})
    with pytest.raises(SystemExit, match="PATH=TARGET"):
        rootfs.parse_symlinks(["usr/bin/java"])
    # Without links the key is the one existing caches were made under; with links it differs.
    assert rootfs.cache_key(["a"], {}) == rootfs.cache_key(["a"]) != rootfs.cache_key(["a"], links)


def test_layer_links_are_written_as_symlinks_in_order(tmp_path):
    (tmp_path / "flink-dist.jar").write_bytes(b"jar")
    manifest = tmp_path / "m"
    manifest.write_text("/opt/dp/lib/flink-dist.jar\t%s\n" % (tmp_path / "flink-dist.jar"))
    links = tmp_path / "l"
    links.write_text("/opt/flink/lib/flink-dist.jar\t/opt/dp/lib/flink-dist.jar\n/opt/flink/plugins\t/opt/dp/plugins\n")
    out, descriptor = tmp_path / "layer.tar.gz", tmp_path / "layer.json"
    layer.main(["files", "--manifest", str(manifest), "--links", str(links), "--out", str(out),
                "--descriptor", str(descriptor)])
    with tarfile.open(out, "r:gz") as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert members["opt/flink/lib/flink-dist.jar"].issym()
    assert members["opt/flink/lib/flink-dist.jar"].linkname == "/opt/dp/lib/flink-dist.jar"
    assert members["opt/flink/plugins"].linkname == "/opt/dp/plugins"
    assert members["opt/dp/lib/flink-dist.jar"].isfile()
    bad = tmp_path / "bad"
    bad.write_text("/opt/flink/lib/x.jar\n")
    with pytest.raises(SystemExit, match="link target"):
        layer.main(["files", "--manifest", str(manifest), "--links", str(bad), "--out", str(out),
                    "--descriptor", str(descriptor)])
