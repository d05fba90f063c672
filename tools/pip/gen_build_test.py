"""gen_build.py writes one py_library per distribution with the right files and deps."""

import ast
import pathlib
import subprocess
import sys


def make_dist(site, name, version, files, requires=()):
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    meta = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    record = []
    for rel in files:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        record.append(f"{rel},sha256=x,0")
    record.append(f"{info.name}/METADATA,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def libraries(build_text):
    out = {}
    for call in ast.parse(build_text).body:
        if isinstance(call, ast.Expr) and getattr(call.value.func, "id", "") == "py_library":
            kw = {k.arg: ast.literal_eval(k.value) for k in call.value.keywords}
            out[kw["name"]] = kw
    return out


def test_one_library_per_distribution(tmp_path):
    site = tmp_path / "site-packages"
    make_dist(site, "Foo.Bar", "1.0", ["foo_bar/__init__.py", "foo_bar/data.json", "foo_bar/a b.txt"],
              requires=["baz>=2", "absent", 'pytest ; extra == "test"'])
    make_dist(site, "baz", "2.0", ["baz.py"])
    out = tmp_path / "BUILD.bazel"
    gen = pathlib.Path("tools/pip/gen_build.py")
    subprocess.run([sys.executable, str(gen), str(site), str(out)], check=True)
    libs = libraries(out.read_text())
    assert set(libs) == {"foo_bar", "baz"}
    assert libs["foo_bar"]["srcs"] == ["site-packages/foo_bar/__init__.py"]
    # Names with spaces cannot be runfiles in Bazel 4 and are skipped.
    assert "site-packages/foo_bar/data.json" in libs["foo_bar"]["data"]
    assert not any(" " in f for f in libs["foo_bar"]["data"])
    # Only requirements present in the set, and never extras.
    assert libs["foo_bar"]["deps"] == [":baz"]
    assert libs["baz"]["imports"] == ["site-packages"]
