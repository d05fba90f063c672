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


def test_distributions_that_require_each_other_share_one_library(tmp_path):
    # apache-airflow-core -> apache-airflow-providers-common-compat -> apache-airflow -> core
    site = tmp_path / "site-packages"
    make_dist(site, "core", "1.0", ["core/__init__.py"], requires=["compat", "leaf"])
    make_dist(site, "compat", "1.0", ["compat/__init__.py"], requires=["meta"])
    make_dist(site, "meta", "1.0", ["meta/__init__.py", "meta/x.json"], requires=["core"])
    make_dist(site, "leaf", "1.0", ["leaf.py"])
    make_dist(site, "user", "1.0", ["user.py"], requires=["meta"])
    out = tmp_path / "BUILD.bazel"
    subprocess.run([sys.executable, "tools/pip/gen_build.py", str(site), str(out)], check=True)
    libs = libraries(out.read_text())
    shared = libs["_cycle_compat"]
    assert sorted(shared["srcs"]) == ["site-packages/compat/__init__.py", "site-packages/core/__init__.py",
                                      "site-packages/meta/__init__.py"]
    # Data files and each member's metadata (entry points are found through it) stay with it.
    assert "site-packages/meta/x.json" in shared["data"]
    for name in ("core", "compat", "meta"):
        assert "site-packages/%s-1.0.dist-info/METADATA" % name in shared["data"]
    assert shared["deps"] == [":leaf"]
    for name in ("core", "compat", "meta"):
        assert libs[name]["deps"] == [":_cycle_compat"] and libs[name]["srcs"] == []
    assert libs["user"]["deps"] == [":meta"]
    assert libs["leaf"]["deps"] == []
