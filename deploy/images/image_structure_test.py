"""Structure test of one image tarball: layout, config, root file system, and the app's --help.

Environment (set per image in BUILD.bazel):
  OCI_IMAGE         the py_image outputs ($(rootpaths :name)): <name>.tar and <name>.digest
  IMAGE_MAIN        the entrypoint's main file inside the image
  IMAGE_REPO_TAG    the name:tag docker/podman give the image
  IMAGE_FILES       extra paths that must exist in the root file system (space separated)
  IMAGE_ABSENT      distributions that must not be shipped (test-only ones), space separated
  IMAGE_HELP_TEXT   a phrase the app's --help prints
  IMAGE_IMPORTS     third-party modules the image's python must import (space separated)
  IMAGE_ENTRYPOINT  the expected entrypoint as JSON (default: the image's python on IMAGE_MAIN)
  IMAGE_APP_DIR     where the runfiles tree of the workspace is (default /app)
  IMAGE_ROOTS       top-level folders the layers above the base may write (default: app)
  IMAGE_SITE        the site-packages folder checked against IMAGE_ABSENT
                    (default /app/external/py_core/site-packages)
  IMAGE_RUN         JSON list of [argv, phrase]: further programs run inside the image as its
                    user, each must exit 0 and print the phrase (the engine's CLI, the job's --help)

An image with Java (/usr/lib/jvm/*/bin/keytool) must also trust the image's CA certificates: its
keytool lists them all in the default trust store, and its default TLS trust managers accept them.

The app is started inside the unpacked root file system with chroot as the image's user, in its
own mount and PID namespaces with a /proc (root is needed for chroot; without it,
`unshare --map-root-user` gives a user namespace).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import stat
import subprocess
import tarfile

import pytest

NONROOT = 65532


def _outputs():
    paths = os.environ["OCI_IMAGE"].split()
    tar = next(p for p in paths if p.endswith(".tar"))
    digest = next(p for p in paths if p.endswith(".digest"))
    return pathlib.Path(tar), pathlib.Path(digest)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    tar_path, digest_path = _outputs()
    out = tmp_path_factory.mktemp("layout")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        for member in tar.getmembers():
            assert member.mtime == 0 and member.uid == 0 and member.gid == 0, member.name
        tar.extractall(out)
    assert names == sorted(names), "entries of the image tarball are not sorted"
    return out, digest_path.read_text().strip()


def _json(path: pathlib.Path):
    return json.loads(path.read_bytes())


def _blob(root: pathlib.Path, digest: str) -> pathlib.Path:
    algorithm, hexdigest = digest.split(":", 1)
    assert algorithm == "sha256"
    return root / "blobs" / "sha256" / hexdigest


@pytest.fixture(scope="module")
def image(layout):
    root, digest = layout
    index = _json(root / "index.json")
    assert _json(root / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    (entry,) = index["manifests"]
    assert entry["digest"] == digest, "the .digest output names another manifest than index.json"
    assert entry["annotations"]["io.containerd.image.name"] == os.environ["IMAGE_REPO_TAG"]
    manifest = _json(_blob(root, digest))
    config = _json(_blob(root, manifest["config"]["digest"]))
    return root, index, manifest, config


def test_every_blob_matches_its_digest_and_size(image):
    root, index, manifest, _ = image
    descriptors = [index["manifests"][0], manifest["config"]] + manifest["layers"]
    for descriptor in descriptors:
        data = _blob(root, descriptor["digest"]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
        assert len(data) == descriptor["size"]
    blobs = sorted(p.name for p in (root / "blobs" / "sha256").iterdir())
    assert blobs == sorted({d["digest"].split(":")[1] for d in descriptors}), "unreferenced or missing blobs"


def test_docker_manifest_agrees_with_the_oci_manifest(image):
    root, _, manifest, _ = image
    (docker,) = _json(root / "manifest.json")
    assert docker["RepoTags"] == [os.environ["IMAGE_REPO_TAG"]]
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
    assert docker["Layers"] == ["blobs/sha256/" + l["digest"].split(":")[1] for l in manifest["layers"]]


def test_three_layers_whose_diff_ids_are_the_uncompressed_tars(image):
    root, _, manifest, config = image
    layers = manifest["layers"]
    assert len(layers) == 3, "want base, third-party and app layers"
    for layer, diff_id in zip(layers, config["rootfs"]["diff_ids"]):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        with gzip.open(_blob(root, layer["digest"])) as stream:
            sha = hashlib.sha256()
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                sha.update(chunk)
        assert "sha256:" + sha.hexdigest() == diff_id


def test_config_entrypoint_user_and_labels(image):
    _, _, _, config = image
    c = config["config"]
    assert c["Entrypoint"] == json.loads(os.environ.get("IMAGE_ENTRYPOINT") or "null") or [
        "/usr/bin/python3.11", os.environ["IMAGE_MAIN"]]
    assert c["User"] == "%d:%d" % (NONROOT, NONROOT)
    assert config["created"] == "1970-01-01T00:00:00Z"
    labels = c["Labels"]
    assert labels["org.opencontainers.image.title"] == os.environ["IMAGE_REPO_TAG"].split(":")[0]
    revision = labels["org.opencontainers.image.revision"]
    assert revision == "unstamped" or re.fullmatch(r"[0-9a-f]{40}|unknown", revision), revision
    env = dict(item.split("=", 1) for item in c["Env"])
    assert env["PYTHONPATH"].split(":")[0] == os.environ.get("IMAGE_APP_DIR", "/app")
    assert not any(re.search(r"(?i)(password|secret|token|api_key)", key) for key in env), env


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory):
    root, _, manifest, _ = image
    out = tmp_path_factory.mktemp("rootfs")
    members = {}
    for number, layer in enumerate(manifest["layers"]):
        with tarfile.open(_blob(root, layer["digest"]), mode="r:gz") as tar:
            for member in tar.getmembers():
                assert not member.name.startswith(("/", "..")) and "/../" not in member.name, member.name
                members[member.name.rstrip("/")] = (number, member)
            tar.extractall(out, numeric_owner=True)
    out.chmod(0o755)  # the container's / (pytest makes its folders 0700, which the image user cannot enter)
    return out, members


def test_nonroot_user_exists_and_owns_only_its_home(rootfs):
    out, members = rootfs
    passwd = (out / "etc" / "passwd").read_text()
    assert re.search(r"^nonroot:x:%d:%d:" % (NONROOT, NONROOT), passwd, re.M), passwd
    assert "nonroot:x:%d:" % NONROOT in (out / "etc" / "group").read_text()
    owned = sorted(name for name, (_, m) in members.items() if m.uid == NONROOT)
    assert owned == ["home/nonroot"]
    assert members["tmp"][1].mode == 0o1777


def test_required_files_present(rootfs):
    out, members = rootfs
    required = ["usr/bin/python3.11", os.environ["IMAGE_MAIN"].lstrip("/"), "etc/ssl/certs/ca-certificates.crt",
                "usr/lib/python3.11/ssl.py"] + os.environ.get("IMAGE_FILES", "").split()
    missing = [path for path in required if not (out / path).exists() and not (out / path).is_symlink()]
    assert not missing, "missing from the image: %s" % missing


def test_app_and_third_party_layers_hold_only_the_runfiles_tree(rootfs):
    _, members = rootfs
    roots = os.environ.get("IMAGE_ROOTS", "app").split()
    for name, (number, _) in members.items():
        if number > 0:
            inside = any(name == r or name.startswith(r + "/") or r.startswith(name + "/") for r in roots)
            assert inside, "layer %d writes %s outside %s" % (number, name, roots)
        assert "__pycache__" not in name.split("/") and not name.endswith(".pyc"), name


def test_no_test_only_distributions_and_no_secrets(rootfs):
    out, members = rootfs
    site = out / os.environ.get("IMAGE_SITE", "/app/external/py_core/site-packages").lstrip("/")
    for dist in os.environ.get("IMAGE_ABSENT", "").split():
        assert not (site / dist).exists(), "%s (a test-only dependency) is in the image" % dist
    for name, (number, member) in members.items():
        if number == 0 or not member.isfile():
            continue
        assert ".state/" not in name and not name.endswith(("api_keys.jsonl", "dev-api-key")), name
        app = os.environ.get("IMAGE_APP_DIR", "/app").lstrip("/")
        if name.startswith(app + "/") and not name.startswith(app + "/external/"):
            assert b"PRIVATE KEY-----" not in (out / name).read_bytes(), "%s holds a private key" % name


# What a container runtime provides and the image does not ship: device nodes in /dev (the
# engines' scripts write to /dev/null, the JVM seeds from /dev/urandom), /dev/fd (bash process
# substitution), /etc/hosts naming this host (the JVM resolves its own name) and a /proc (the
# dynamic loader finds the JDK's libraries through /proc/self/exe). Made in the unpacked root file
# system; /proc is mounted in a private mount and PID namespace that vanishes with the program.
DEVICES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}


def _container_runtime_files(out: pathlib.Path) -> None:
    dev = out / "dev"
    dev.mkdir(mode=0o755, exist_ok=True)
    if os.geteuid() == 0:
        for name, (major, minor) in DEVICES.items():
            if not (dev / name).exists():
                os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
                os.chmod(dev / name, 0o666)
    if not (dev / "fd").is_symlink():
        (dev / "fd").symlink_to("/proc/self/fd")
    (out / "proc").mkdir(mode=0o555, exist_ok=True)
    (out / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.0.1 %s\n" % socket.gethostname())


def _run_in_rootfs(out: pathlib.Path, config: dict, args):
    _container_runtime_files(out)
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    entrypoint = config["config"]["Entrypoint"]
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    namespaces = ["unshare", "--mount", "--pid", "--fork", "--mount-proc=%s" % (out / "proc")]
    if os.geteuid() == 0:
        uid, gid = config["config"]["User"].split(":")
        cmd = namespaces + [chroot, "--userspec=%s:%s" % (uid, gid), str(out)] + entrypoint + args
    else:
        cmd = namespaces[:1] + ["--map-root-user"] + namespaces[1:] + [chroot, str(out)] + entrypoint + args
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def test_app_starts_with_help_inside_the_image(image, rootfs):
    out, _ = rootfs
    result = _run_in_rootfs(out, image[3], ["--help"])
    assert result.returncode == 0, result.stdout
    assert "usage:" in result.stdout
    assert os.environ["IMAGE_HELP_TEXT"] in result.stdout, result.stdout


@pytest.mark.parametrize("argv, phrase", json.loads(os.environ.get("IMAGE_RUN") or "[]"))
def test_programs_run_inside_the_image(image, rootfs, argv, phrase):
    out, _ = rootfs
    config = json.loads(json.dumps(image[3]))
    config["config"]["Entrypoint"] = argv
    result = _run_in_rootfs(out, config, [])
    assert result.returncode == 0, result.stdout
    assert phrase in result.stdout, result.stdout


def test_image_python_runs_as_nonroot_and_imports_the_locked_packages(image, rootfs):
    out, _ = rootfs
    probe = ("import importlib, os, ssl, sys; [importlib.import_module(m) for m in %r]; "
             "print(os.getuid(), sys.version_info[:2] == (3, 11), ssl.OPENSSL_VERSION.startswith('OpenSSL'))"
             % os.environ.get("IMAGE_IMPORTS", "").split())
    config = json.loads(json.dumps(image[3]))
    config["config"]["Entrypoint"] = ["/usr/bin/python3.11", "-c", probe]
    result = _run_in_rootfs(out, config, [])
    assert result.returncode == 0, result.stdout
    expected_uid = str(NONROOT) if os.geteuid() == 0 else "0"
    # the last line: chdb, for one, warns on stderr that the bare chroot has no cgroup files
    assert result.stdout.strip().splitlines()[-1].split() == [expected_uid, "True", "True"], result.stdout


def _java_home(out: pathlib.Path):
    """The JDK/JRE folder of the image (/usr/lib/jvm/<name>), or None for an image without Java."""
    # Debian also installs a link to it (java-1.17.0-openjdk-amd64 -> java-17-openjdk-amd64)
    homes = sorted(p.parent.parent for p in out.glob("usr/lib/jvm/*/bin/keytool") if not p.parent.parent.is_symlink())
    assert len(homes) <= 1, "more than one Java in the image: %s" % homes
    return "/" + str(homes[0].relative_to(out)) if homes else None


def _ca_certificates(out: pathlib.Path):
    """SHA-256 fingerprints (keytool's AA:BB:... form) of every certificate in the image's CA files."""
    prints = []
    for crt in sorted(out.glob("usr/share/ca-certificates/**/*.crt")):
        for block in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", crt.read_text(), re.S):
            der = base64.b64decode("".join(block.split()))
            prints.append(":".join("%02X" % b for b in hashlib.sha256(der).digest()))
    return prints


# keytool and the probe print dates and numbers in the default locale: pinned to English, UTC.
JAVA_LOCALE = ["-Duser.language=en", "-Duser.country=US", "-Duser.timezone=UTC"]

# The JVM's default trust managers, as every TLS connection of the engines gets them (no
# javax.net.ssl.trustStore set: JAVA_HOME/lib/security/cacerts, Debian's link to
# /etc/ssl/certs/java/cacerts).
TRUST_PROBE = """
import java.security.KeyStore;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

public class TrustProbe {
    public static void main(String[] args) throws Exception {
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init((KeyStore) null);
        for (TrustManager manager : factory.getTrustManagers()) {
            if (manager instanceof X509TrustManager) {
                System.out.println("trusted issuers: " + ((X509TrustManager) manager).getAcceptedIssuers().length);
            }
        }
    }
}
"""


def test_image_java_lists_every_ca_certificate_in_its_trust_store(image, rootfs):
    """The JVM images' Java trust store (made by tools/oci/rootfs.py, as ca-certificates-java would)
    holds exactly the image's CA certificates, read by the image's own keytool."""
    out, _ = rootfs
    java_home = _java_home(out)
    if java_home is None:
        pytest.skip("no Java in this image (no usr/lib/jvm/*/bin/keytool)")
    expected = _ca_certificates(out)
    assert expected, "the image has Java but no CA certificates under /usr/share/ca-certificates"
    config = json.loads(json.dumps(image[3]))
    config["config"]["Entrypoint"] = [java_home + "/bin/keytool", "-list", "-cacerts", "-storepass", "changeit"] + [
        "-J" + option for option in JAVA_LOCALE]
    result = _run_in_rootfs(out, config, [])
    assert result.returncode == 0, result.stdout
    assert "Your keystore contains %d entries" % len(expected) in result.stdout, result.stdout
    listed = re.findall(r"^Certificate fingerprint \(SHA-256\): (\S+)", result.stdout, re.M)
    assert sorted(listed) == sorted(expected)


@pytest.mark.skipif(not shutil.which("javac"), reason="no javac on this machine to compile the trust probe (a JDK 17)")
def test_image_java_default_tls_trust_managers_trust_the_ca_certificates(image, rootfs):
    """What TLS from the engines uses: the default TrustManagerFactory of the image's Java, run as
    the image's user, accepts as many issuers as the image has CA certificates."""
    out, _ = rootfs
    java_home = _java_home(out)
    if java_home is None:
        pytest.skip("no Java in this image (no usr/lib/jvm/*/bin/keytool)")
    probe = out / "tmp" / "trust-probe"
    probe.mkdir(mode=0o755, exist_ok=True)
    (probe / "TrustProbe.java").write_text(TRUST_PROBE)
    subprocess.run([shutil.which("javac"), "--release", "17", "-d", str(probe), str(probe / "TrustProbe.java")],
                   check=True, timeout=300)
    config = json.loads(json.dumps(image[3]))
    config["config"]["Entrypoint"] = [java_home + "/bin/java"] + JAVA_LOCALE + ["-cp", "/tmp/trust-probe", "TrustProbe"]
    result = _run_in_rootfs(out, config, [])
    assert result.returncode == 0, result.stdout
    # the trust managers hold a set: a certificate in two CA files counts once
    assert "trusted issuers: %d" % len(set(_ca_certificates(out))) in result.stdout, result.stdout


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed (Debian package skopeo)")
@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_an_independent_reader_accepts_the_tarball(transport, tmp_path):
    """skopeo (containers/image, what podman uses) reads the OCI layout and Docker's manifest.json,
    verifying every blob digest and, for docker-archive, every diff_id, while copying."""
    tar_path, digest_path = _outputs()
    result = subprocess.run(["skopeo", "copy", "-q", "%s:%s" % (transport, tar_path), "dir:%s" % (tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", "%s:%s" % (transport, tar_path)],
                                       check=True, stdout=subprocess.PIPE, text=True).stdout)
    assert config["config"]["User"] == "%d:%d" % (NONROOT, NONROOT)
