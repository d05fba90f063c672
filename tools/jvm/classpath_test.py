import pytest

from tools.jvm import classpath


def test_finds_jars_under_runfiles_dir(tmp_path, monkeypatch):
    jars = tmp_path / "maven_demo" / "jars"
    jars.mkdir(parents=True)
    for name in ("b.jar", "a.jar", "notes.txt"):
        (jars / name).write_text("")
    monkeypatch.setenv("RUNFILES_DIR", str(tmp_path))
    assert classpath.jars("maven_demo") == [str(jars / "a.jar"), str(jars / "b.jar")]


def test_finds_the_legacy_external_layout(tmp_path, monkeypatch):
    jars = tmp_path / classpath.WORKSPACE_NAME / "external" / "maven_demo" / "jars"
    jars.mkdir(parents=True)
    (jars / "a.jar").write_text("")
    monkeypatch.setenv("RUNFILES_DIR", str(tmp_path))
    assert classpath.jars("maven_demo") == [str(jars / "a.jar")]


def test_missing_repository_says_what_to_add(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNFILES_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"add `@maven_absent//:classpath` to the target's data"):
        classpath.jars("maven_absent")
