"""Builds the images' base root file system from Debian packages, once per package list.

Run by the repository rule in debian_rootfs.bzl (fetch time, not build time):

    rootfs.py --cache DIR --out-dir REPO_DIR python3.11-minimal libpython3.11-stdlib ...

1. apt-get resolves the packages and their whole dependency closure against an empty dpkg
   status (so nothing already installed on this machine is assumed) and downloads the .deb
   files from the mirrors of this machine's own apt sources.
2. The data of every .deb is merged (later packages win, as dpkg would unpack them),
   documentation, manual pages and translations are dropped, and the image user is added:
   /etc/passwd and /etc/group with `nonroot` (uid/gid 65532), /home/nonroot owned by it,
   /tmp world-writable with the sticky bit, and the CA bundle that ca-certificates' maintainer
   script would have generated; when the packages hold a JVM (a link to the Java trust store
   /etc/ssl/certs/java/cacerts, as openjdk's lib/security/cacerts is), also that trust store,
   which ca-certificates-java's maintainer script would have made by running Java (jks.py).
3. Links that maintainer scripts would have made (`update-alternatives`: /usr/bin/java, a
   `python3`) are added from `--symlink PATH=TARGET`.
4. The result is written as one deterministic tar (tarball.py) plus `packages.txt`
   (package=version of every unpacked .deb).

Both land in DIR/<key>/, key = hash of the package list, the links and FORMAT; a later fetch (a new clone,
a new output base) with the same list reuses them without touching the network. Delete the
folder to pick up Debian security updates.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Dict, List, Optional

import jks
import tarball

# Bump when the post-processing below changes: a new key, a new cached root file system.
FORMAT = "2"  # 2: the Java trust store
USER, UID = "nonroot", 65532

# Paths not worth shipping in a container: documentation, manual pages, translations, lintian.
DROP_PREFIXES = (
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/bug/",
)

PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\n%s:x:%d:%d:%s:/home/%s:/usr/sbin/nologin\n" % (
    USER, UID, UID, USER, USER)
GROUP = "root:x:0:\n%s:x:%d:\n" % (USER, UID)
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
JAVA_TRUST_STORE = "etc/ssl/certs/java/cacerts"


def cache_key(packages: List[str], symlinks: Optional[Dict[str, str]] = None) -> str:
    text = "format=%s\npackages=%s\n" % (FORMAT, " ".join(sorted(set(packages))))
    if symlinks:  # absent for a list without links: the key of existing caches stays the same
        text += "symlinks=%s\n" % " ".join("%s=%s" % item for item in sorted(symlinks.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def parse_symlinks(pairs: List[str]) -> Dict[str, str]:
    """{path in the image: link target} from PATH=TARGET arguments."""
    links = {}
    for pair in pairs:
        path, sep, target = pair.partition("=")
        path = os.path.normpath(path.strip("/")) if path.strip("/") else ""
        if not sep or not path or not target or path.startswith(".."):
            raise SystemExit("--symlink %r: want PATH=TARGET with a path inside the image" % pair)
        links[path] = target
    return links


def add_symlinks(entries: Dict[str, tarball.Entry], links: Dict[str, str]) -> None:
    """Adds the links; each must point at something the packages installed (checked in the image)."""
    for path, target in sorted(links.items()):
        link = tarball.Entry(path, kind="symlink", mode=0o777, target=target)
        if link_target(link) not in entries:
            raise SystemExit("--symlink %s=%s: %s is not in the unpacked packages" % (path, target, link_target(link)))
        entries[path] = link


def download(packages: List[str], dest: str) -> List[str]:
    """Downloads the packages and their dependency closure; returns the .deb paths."""
    state = os.path.join(dest, "state")
    archives = os.path.join(dest, "archives")
    os.makedirs(os.path.join(archives, "partial"))
    os.makedirs(state)
    open(os.path.join(state, "status"), "w").close()
    cmd = [
        "apt-get", "-q", "-y", "--download-only",
        "-o", "Dir::State::Status=" + os.path.join(state, "status"),
        "-o", "Dir::Cache::Archives=" + archives,
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Install-Recommends=false",
        "-o", "APT::Install-Suggests=false",
        "install",
    ] + packages
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0 and "Unable to locate package" in res.stdout and os.geteuid() == 0:
        # A fresh machine or container without package lists: refresh them once, as ./bazelw does.
        print("rootfs: refreshing the package lists (apt-get update)", file=sys.stderr)
        subprocess.run(["apt-get", "-q", "update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise SystemExit("apt-get could not download %s (exit %d); run `apt-get update` and retry:\n%s"
                         % (" ".join(packages), res.returncode, res.stdout[-4000:]))
    debs = sorted(os.path.join(archives, name) for name in os.listdir(archives) if name.endswith(".deb"))
    if not debs:
        raise SystemExit("apt-get downloaded no packages for %s" % " ".join(packages))
    return debs


def deb_version(deb: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Version"], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    return "%s=%s" % (fields["Package"], fields["Version"])


def unpack(debs: List[str]) -> Dict[str, tarball.Entry]:
    """The merged data of all packages as tarball entries (path -> entry)."""
    entries: Dict[str, tarball.Entry] = {}
    for deb in debs:
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, stdout=subprocess.PIPE).stdout
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            by_name = {m.name: m for m in members}
            for member in members:
                path = os.path.normpath(member.name)
                if path == "." or any(path.startswith(p) or path + "/" == p for p in DROP_PREFIXES):
                    continue
                mode = member.mode & 0o7777
                if member.isdir():
                    entries[path] = tarball.Entry(path, kind="dir", mode=mode, uid=member.uid, gid=member.gid)
                elif member.issym():
                    entries[path] = tarball.Entry(path, kind="symlink", mode=0o777, target=member.linkname)
                elif member.isfile() or member.islnk():
                    source = by_name[member.linkname] if member.islnk() else member
                    content = tar.extractfile(source).read()
                    entries[path] = tarball.Entry(path, mode=mode, uid=member.uid, gid=member.gid, data=content)
    return entries


def link_target(entry: tarball.Entry) -> str:
    """The path inside the image a symbolic link points at (normalised, no leading slash)."""
    target = entry.target
    if target.startswith("/"):
        return os.path.normpath(target.lstrip("/"))
    return os.path.normpath(os.path.join(os.path.dirname(entry.path), target))


def finish(entries: Dict[str, tarball.Entry]) -> None:
    """Adds what maintainer scripts and an init system would have: users, writable dirs, CA
    bundle, and the Java trust store when a JVM links to it."""
    entries["etc/passwd"] = tarball.Entry("etc/passwd", data=PASSWD.encode())
    entries["etc/group"] = tarball.Entry("etc/group", data=GROUP.encode())
    entries["home/" + USER] = tarball.Entry("home/" + USER, kind="dir", mode=0o755, uid=UID, gid=UID)
    entries["root"] = tarball.Entry("root", kind="dir", mode=0o700)
    entries["tmp"] = tarball.Entry("tmp", kind="dir", mode=0o1777)
    certs = sorted(p for p in entries if p.startswith("usr/share/ca-certificates/") and p.endswith(".crt"))
    if certs:
        bundle = b"".join(entries[p].data.rstrip(b"\n") + b"\n" for p in certs)
        entries[CA_BUNDLE] = tarball.Entry(CA_BUNDLE, data=bundle)
    wants_java_store = any(e.kind == "symlink" and link_target(e) == JAVA_TRUST_STORE for e in entries.values())
    if certs and wants_java_store:
        try:
            store = jks.ca_trust_store((p, entries[p].data) for p in certs)
        except ValueError as err:
            raise SystemExit("cannot make the Java trust store %s: %s" % (JAVA_TRUST_STORE, err)) from None
        entries[JAVA_TRUST_STORE] = tarball.Entry(JAVA_TRUST_STORE, data=store)


def build(packages: List[str], cache: str, symlinks: Optional[Dict[str, str]] = None) -> str:
    """Returns the cache folder holding rootfs.tar and packages.txt, building it when missing."""
    folder = os.path.join(cache, cache_key(packages, symlinks))
    if os.path.isfile(os.path.join(folder, "rootfs.tar")):
        print("rootfs: reusing %s" % folder, file=sys.stderr)
        return folder
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as work:
        print("rootfs: downloading %s and dependencies" % " ".join(packages), file=sys.stderr)
        debs = download(packages, work)
        versions = sorted(deb_version(deb) for deb in debs)
        print("rootfs: unpacking %d packages" % len(debs), file=sys.stderr)
        entries = unpack(debs)
        finish(entries)
        add_symlinks(entries, symlinks or {})
        staged = os.path.join(work, "out")
        os.makedirs(staged)
        with open(os.path.join(staged, "rootfs.tar"), "wb") as out:
            tarball.write_tar(entries.values(), out)
        with open(os.path.join(staged, "packages.txt"), "w") as out:
            out.write("# Debian packages unpacked into the image base (package=version)\n")
            out.write("".join(v + "\n" for v in versions))
        if os.path.isfile(os.path.join(folder, "rootfs.tar")):
            return folder  # another fetch (another output base) finished first: use its result
        if os.path.isdir(folder):  # no rootfs.tar: not a finished build
            shutil.rmtree(folder)
        try:
            os.rename(staged, folder)
        except OSError:
            if not os.path.isfile(os.path.join(folder, "rootfs.tar")):
                raise
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="persistent cache folder (outside the workspace)")
    parser.add_argument("--print-folder", action="store_true", help="print the cache folder used")
    parser.add_argument("--symlink", action="append", default=[], metavar="PATH=TARGET",
                        help="a link a maintainer script would have made (usr/bin/java=/usr/lib/jvm/.../java)")
    parser.add_argument("packages", nargs="+", help="Debian packages; their dependencies come along")
    args = parser.parse_args(argv)
    folder = build(args.packages, os.path.abspath(args.cache), parse_symlinks(args.symlink))
    if args.print_folder:
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
