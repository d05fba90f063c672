"""lock_check finds a binary that does not match its go.mod/go.sum (pure, on made-up text)."""

import pytest

from tools.go import lock_check

GO_MOD = """// comment
module example/tool

go 1.25.0

require example.com/tool v1.2.0

require (
\texample.com/dep v0.3.0 // indirect
)
"""

GO_SUM = """example.com/dep v0.3.0 h1:DEP=
example.com/dep v0.3.0/go.mod h1:DEPMOD=
example.com/tool v1.2.0 h1:TOOL=
example.com/tool v1.2.0/go.mod h1:TOOLMOD=
"""

INFO = """bin/tool: go1.26.8
\tpath\texample.com/tool/cmd/tool
\tmod\texample.com/tool\tv1.2.0\th1:TOOL=
\tdep\texample.com/dep\tv0.3.0\th1:DEP=
\tbuild\tCGO_ENABLED=0
"""


def test_matching_lock_has_no_problems():
    assert lock_check.problems(GO_MOD, GO_SUM, INFO, "tool v1.2.0\n") == []


def test_requirements_read_single_and_block_forms():
    assert lock_check.requirements(GO_MOD) == {"example.com/tool": "v1.2.0", "example.com/dep": "v0.3.0"}


def test_version_moved_in_go_mod_without_rebuild():
    found = lock_check.problems(GO_MOD.replace("tool v1.2.0", "tool v1.3.0"), GO_SUM, INFO, "tool v1.2.0")
    assert any("example.com/tool v1.2.0 is compiled in, go.mod requires v1.3.0" in p for p in found)
    assert any("no go.mod hash for example.com/tool v1.3.0" in p for p in found)


def test_hash_differs_from_go_sum():
    found = lock_check.problems(GO_MOD, GO_SUM.replace("h1:DEP=", "h1:OTHER="), INFO, "tool v1.2.0")
    assert found == ["example.com/dep v0.3.0 was compiled with hash h1:DEP=, go.sum says h1:OTHER="]


def test_replacement_is_reported():
    info = INFO + "\t=>\t../fork\t(devel)\t\n"
    assert any("replacement" in p for p in lock_check.problems(GO_MOD, GO_SUM, info, "tool v1.2.0"))


def test_binary_reporting_another_version():
    assert lock_check.problems(GO_MOD, GO_SUM, INFO, "tool dev build <no version set>") == [
        "the binary reports 'tool dev build <no version set>', not the pinned example.com/tool v1.2.0"]


def test_malformed_go_sum_line():
    with pytest.raises(ValueError, match="go.sum:1"):
        lock_check.sums("only two\n")
