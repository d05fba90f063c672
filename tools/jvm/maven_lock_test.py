import pytest

from tools.jvm import maven_lock
from tools.jvm.maven_lock import Coordinate

COMMAND = "bazel run //third_party/jvm:demo_lock.update"
SHA_A = "a" * 64
SHA_B = "b" * 64


def test_coordinate_round_trip_with_and_without_classifier():
    assert str(Coordinate.parse("g:a:1.0")) == "g:a:1.0"
    assert Coordinate.parse("g:a:1.0:linux").classifier == "linux"
    with pytest.raises(ValueError, match="group:artifact:version"):
        Coordinate.parse("g:a")


def test_artifacts_reject_a_root_pinned_twice():
    with pytest.raises(ValueError, match=r"artifacts.txt:3: g:a:2 is pinned twice"):
        maven_lock.parse_artifacts("# roots\ng:a:1\ng:a:2\n")


def test_format_then_parse_keeps_everything():
    roots = [Coordinate.parse("g:root:1")]
    jars = {Coordinate.parse("g:root:1"): SHA_A, Coordinate.parse("g:dep:2:native"): SHA_B}
    lock = maven_lock.parse_lock(maven_lock.format_lock(COMMAND, roots, jars))
    assert lock.command == COMMAND
    assert lock.roots == roots
    assert lock.jars == jars
    assert maven_lock.stale_reasons(roots, lock, COMMAND) == []


def test_bad_lock_line_names_file_and_line():
    with pytest.raises(ValueError, match=r"maven_lock.txt:2: want"):
        maven_lock.parse_lock("# header\ng:a:1 not-a-sum\n")


def _lock(roots, jars, command=COMMAND):
    return maven_lock.parse_lock(maven_lock.format_lock(command, roots, jars))


def test_stale_when_a_root_changes_version():
    locked = _lock([Coordinate.parse("g:root:1")], {Coordinate.parse("g:root:1"): SHA_A})
    reasons = maven_lock.stale_reasons([Coordinate.parse("g:root:2")], locked, COMMAND)
    assert any("g:root:2 is pinned but the lock has g:root:1" in r for r in reasons)


def test_stale_when_a_root_is_removed():
    roots = [Coordinate.parse("g:root:1"), Coordinate.parse("g:other:1")]
    locked = _lock(roots, {root: SHA_A for root in roots})
    reasons = maven_lock.stale_reasons(roots[:1], locked, COMMAND)
    assert any("made for roots" in r for r in reasons)


def test_stale_without_header():
    roots = [Coordinate.parse("g:root:1")]
    locked = maven_lock.parse_lock("g:root:1 %s\n" % SHA_A)
    reasons = maven_lock.stale_reasons(roots, locked, COMMAND)
    assert any("header should read" in r for r in reasons)


def test_two_versions_of_one_artifact_are_stale():
    roots = [Coordinate.parse("g:root:1")]
    jars = {Coordinate.parse("g:root:1"): SHA_A, Coordinate.parse("g:dep:1"): SHA_A, Coordinate.parse("g:dep:2"): SHA_B}
    reasons = maven_lock.stale_reasons(roots, _lock(roots, jars), COMMAND)
    assert reasons == ["g:dep: is locked at several versions: 1, 2"]
