"""package-lock.json is current for package.json and names no registry host or local path."""

import json
import re
from pathlib import Path

HERE = Path("third_party/npm/chartjs")
UPDATE = "bazel run //third_party/npm/chartjs:lock.update"


def load(name):
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def test_lock_pins_exactly_the_declared_dependencies():
    manifest, lock = load("package.json"), load("package-lock.json")
    root = lock["packages"][""]
    assert root.get("dependencies", {}) == manifest.get("dependencies", {}), (
        f"package-lock.json is stale for package.json; run: {UPDATE}")
    for name, version in manifest["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: pin an exact version, not {version}"
        assert lock["packages"]["node_modules/" + name]["version"] == version, (
            f"{name} is locked at another version; run: {UPDATE}")


def test_every_package_has_an_integrity_hash():
    for path, entry in load("package-lock.json")["packages"].items():
        if path:
            assert entry.get("integrity", "").startswith("sha512-"), f"{path} has no sha512 integrity"


def test_lock_names_no_registry_or_machine_path():
    text = (HERE / "package-lock.json").read_text(encoding="utf-8")
    assert '"resolved"' not in text, (
        "package-lock.json has `resolved` URLs; regenerate it with the .npmrc next to it: " + UPDATE)
    assert not re.search(r'"(/|[A-Za-z]:\\\\)', text), "package-lock.json contains an absolute path"


def test_npmrc_keeps_registry_out_of_the_lock():
    settings = (HERE / ".npmrc").read_text(encoding="utf-8").splitlines()
    assert "omit-lockfile-registry-resolved=true" in settings
