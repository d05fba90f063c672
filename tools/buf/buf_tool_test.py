"""Unit tests of the image helpers in buf_tool (no buf binary needed)."""

import json

from tools.buf import buf_tool


def image(*files):
    return json.dumps({"file": list(files)})


def test_format_image_is_stable_and_keeps_key_order():
    text = '{"file":[{"name":"a.proto","package":"a.v1"}]}'
    formatted = buf_tool.format_image(text)
    assert formatted == buf_tool.format_image(formatted)
    assert formatted.index('"name"') < formatted.index('"package"')
    assert formatted.endswith("}\n")


def test_identical_images_have_no_differences():
    a = image({"name": "a.proto", "package": "a.v1"})
    assert buf_tool.image_differences(a, buf_tool.format_image(a)) == []


def test_source_info_is_ignored():
    a = image({"name": "a.proto"})
    b = image({"name": "a.proto", "sourceCodeInfo": {"location": [{"path": [4, 0]}]}})
    assert buf_tool.image_differences(a, b) == []


def test_added_removed_and_changed_files_are_named():
    old = image({"name": "keep.proto"}, {"name": "gone.proto"}, {"name": "edit.proto", "package": "x"})
    new = image({"name": "keep.proto"}, {"name": "new.proto"}, {"name": "edit.proto", "package": "y"})
    assert buf_tool.image_differences(old, new) == [
        "added: new.proto", "removed: gone.proto", "changed: edit.proto"]
