"""Publishing days into a local folder: layout, manifest, _SUCCESS last, re-runs replace, settings."""

import datetime as dt
import gzip
import json

import pytest

from services.shop_simulator import main as shop_main
from services.shop_simulator.config import ShopConfig, parse_args
from services.shop_simulator.model import VALID
from services.shop_simulator.writer import DayPublisher, Interrupted, LocalStore, Part, gzip_lines

DAY = dt.date(2026, 2, 3)


class RecordingStore(LocalStore):
    """A real LocalStore that also records the order of operations."""

    def __init__(self, base):
        super().__init__(base)
        self.operations = []

    def write(self, path, data):
        self.operations.append(("write", path))
        super().write(path, data)

    def rename(self, source, destination):
        self.operations.append(("rename", source, destination))
        super().rename(source, destination)


def parts(*sizes):
    """Parts of consecutive numbered lines, `sizes` lines each."""
    result, first = [], 0
    for size in sizes:
        lines = [b'{"n":%d}' % n for n in range(first, first + size)]
        result.append(Part(gzip_lines(lines, 6), size, {VALID: size}, {"pageView": size}))
        first += size
    return result


def read_partition(base, day=DAY, root="/raw/commerce/events"):
    folder = base / root.lstrip("/") / ("dt=%s" % day.isoformat())
    parts = sorted(folder.glob("part-*.jsonl.gz"))
    content = b"".join(gzip.decompress(part.read_bytes()) for part in parts)
    return folder, [part.name for part in parts], content


def test_parts_manifest_and_success_written_last(tmp_path):
    store = RecordingStore(tmp_path)
    publisher = DayPublisher(store, "/raw/commerce/events")
    manifest = publisher.publish(DAY, parts(4, 4, 2), {"seed": 1})
    folder, names, content = read_partition(tmp_path)
    assert names == ["part-00000.jsonl.gz", "part-00001.jsonl.gz", "part-00002.jsonl.gz"]
    assert content == b"".join(b'{"n":%d}\n' % n for n in range(10))
    success = json.loads((folder / "_SUCCESS").read_text())
    assert success["lines"] == 10 and success["valid_events"] == 10 and success["dt"] == "2026-02-03"
    assert success["event_types"] == {"pageView": 10} and success["settings"] == {"seed": 1}
    assert [part["lines"] for part in success["parts"]] == [4, 4, 2]
    assert manifest["parts"] == success["parts"]
    # Parts go to staging, the staging folder is renamed into place, and _SUCCESS comes last.
    kinds = [operation[0] for operation in store.operations]
    assert kinds == ["write", "write", "write", "rename", "write"]
    assert all("/_staging/dt=2026-02-03." in operation[1] for operation in store.operations[:3])
    assert store.operations[-1] == ("write", "/raw/commerce/events/dt=2026-02-03/_SUCCESS")
    assert list((tmp_path / "raw/commerce/events/_staging").iterdir()) == []


def test_rerun_replaces_the_partition_and_removes_stale_staging(tmp_path):
    store = LocalStore(tmp_path)
    DayPublisher(store, "/raw/commerce/events").publish(DAY, parts(3, 3, 3), {})
    # A crashed run of the same day left a staging folder behind.
    stale = tmp_path / "raw/commerce/events/_staging/dt=2026-02-03.deadbeef"
    stale.mkdir(parents=True)
    (stale / "part-00000.jsonl.gz").write_bytes(b"half")
    other_day = tmp_path / "raw/commerce/events/_staging/dt=2026-02-04.cafe"
    other_day.mkdir()
    DayPublisher(store, "/raw/commerce/events").publish(DAY, parts(5), {})
    _, names, content = read_partition(tmp_path)
    assert names == ["part-00000.jsonl.gz"]  # the three old parts are gone, not mixed in
    assert content.count(b"\n") == 5
    assert not stale.exists() and other_day.exists()


def test_interrupted_day_is_not_published(tmp_path):
    store = LocalStore(tmp_path)
    publisher = DayPublisher(store, "/raw", should_stop=lambda: True)
    with pytest.raises(Interrupted, match="not published"):
        publisher.publish(DAY, parts(10, 10), {})
    assert not (tmp_path / "raw/dt=2026-02-03").exists()


def test_same_settings_same_bytes_on_disk_with_any_number_of_workers(tmp_path, capsys):
    argv = ["--days", "2", "--events-per-day", "1500", "--users", "100", "--start-date", "2026-01-05",
            "--part-lines", "1000"]
    assert shop_main.main(argv + ["--output-dir", str(tmp_path / "a")]) == 0
    assert shop_main.main(argv + ["--output-dir", str(tmp_path / "b"), "--workers", "2"]) == 0
    for day in (dt.date(2026, 1, 5), dt.date(2026, 1, 6)):
        folder_a, names_a, _ = read_partition(tmp_path / "a", day)
        folder_b, names_b, _ = read_partition(tmp_path / "b", day)
        assert names_a == names_b and len(names_a) == 2
        for name in names_a + ["_SUCCESS"]:
            assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes()
    output = capsys.readouterr().out
    assert "event=day_published dt=2026-01-06" in output and "event=finished days=2" in output


def test_flags_environment_and_refusals(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DP_WEBHDFS_URL", "http://127.0.0.1:19870/webhdfs/v1")
    monkeypatch.setenv("DP_SHOP_EVENTS_PER_DAY", "2500")
    config = parse_args(["--days", "3", "--start-date", "2026-04-01", "--users", "50"])
    assert config.webhdfs_url == "http://127.0.0.1:19870/webhdfs/v1"
    assert config.events_per_day == 2500
    assert config.dates == [dt.date(2026, 4, 1), dt.date(2026, 4, 2), dt.date(2026, 4, 3)]
    assert parse_args(["--events-per-day", "700"]).events_per_day == 700  # a flag wins
    for bad, message in ((["--days", "0"], "days must be at least 1"),
                         (["--bad-line-rate", "0.7"], "bad-line-rate must be within"),
                         (["--start-date", "2026-13-01"], "want a date"),
                         (["--root", "raw"], "root must be an absolute path")):
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert message in capsys.readouterr().err
    monkeypatch.setenv("DP_SHOP_USERS", "many")
    with pytest.raises(SystemExit, match="DP_SHOP_USERS='many' is not a valid int"):
        parse_args([])
    with pytest.raises(ValueError):
        ShopConfig(events_per_day=5)


def test_unreachable_hdfs_is_a_clear_error(capsys):
    from deploy.common.process import free_port

    port = free_port()
    code = shop_main.main(["--webhdfs-url", "http://127.0.0.1:%d/webhdfs/v1" % port, "--events-per-day", "200",
                           "--users", "10"])
    assert code == 1
    assert "could not write to http://127.0.0.1:%d/webhdfs/v1" % port in capsys.readouterr().err


def test_extra_part_is_published_unchanged_with_every_day(tmp_path, capsys):
    extra = tmp_path / "extra.jsonl"
    extra.write_bytes(b'{"not": "an event"}\n\xff\xfe\r\n{"eventId": "cut')
    argv = ["--start-date", "2026-01-05", "--days", "2", "--users", "40", "--products", "20",
            "--events-per-day", "300", "--part-lines", "200", "--output-dir", str(tmp_path / "out"),
            "--extra-part", str(extra)]
    assert shop_main.main(argv) == 0
    for day in (dt.date(2026, 1, 5), dt.date(2026, 1, 6)):
        folder, names, _ = read_partition(tmp_path / "out", day)
        assert names == ["part-00000.jsonl.gz", "part-00001.jsonl.gz", "part-00002.jsonl.gz"]
        assert gzip.decompress((folder / names[-1]).read_bytes()) == extra.read_bytes()
        manifest = json.loads((folder / "_SUCCESS").read_text())
        assert manifest["extra_lines"] == 3 and manifest["parts"][-1] == {
            "name": "part-00002.jsonl.gz", "lines": 3, "bytes": (folder / names[-1]).stat().st_size}
        assert manifest["lines"] == sum(part["lines"] for part in manifest["parts"])
    with pytest.raises(SystemExit):
        parse_args(["--extra-part", str(tmp_path / "missing.jsonl")])
    assert "extra-part must be a readable file" in capsys.readouterr().err
