"""The shop simulator against a real HDFS (NameNode + 2 DataNodes over WebHDFS)."""

import datetime as dt
import gzip
import json

from deploy.hdfs.webhdfs import WebHdfsClient
from services.shop_simulator import main as shop_main
from tests.fixtures.hdfs_cluster import hdfs_cluster  # noqa: F401 (a fixture)

SETTINGS = ["--start-date", "2026-01-30", "--days", "2", "--events-per-day", "4000", "--users", "300",
            "--part-lines", "2500", "--seed", "21"]
ROOT = "/raw/commerce/events"


def partition_bytes(client, day):
    folder = "%s/dt=%s" % (ROOT, day)
    names = [entry["pathSuffix"] for entry in client.list(folder)]
    return {name: client.read("%s/%s" % (folder, name)) for name in names}


def test_days_land_in_hdfs_exactly_as_generated(hdfs_cluster, tmp_path):
    client = WebHdfsClient(hdfs_cluster.webhdfs_url, user="shop")
    assert shop_main.main(SETTINGS + ["--webhdfs-url", hdfs_cluster.webhdfs_url, "--hdfs-user", "shop"]) == 0
    assert shop_main.main(SETTINGS + ["--output-dir", str(tmp_path)]) == 0

    listing = [entry["pathSuffix"] for entry in client.list(ROOT)]
    assert "dt=2026-01-30" in listing and "dt=2026-01-31" in listing
    assert client.list(ROOT + "/_staging") == []
    for day in ("2026-01-30", "2026-01-31"):
        files = partition_bytes(client, day)
        assert sorted(files) == ["_SUCCESS", "part-00000.jsonl.gz", "part-00001.jsonl.gz"]
        local = tmp_path / ROOT.lstrip("/") / ("dt=" + day)
        for name, data in files.items():
            assert data == (local / name).read_bytes(), name
        manifest = json.loads(files["_SUCCESS"])
        lines = b"".join(gzip.decompress(files[name]) for name in ("part-00000.jsonl.gz", "part-00001.jsonl.gz"))
        assert lines.count(b"\n") == manifest["lines"] > 3000
        assert manifest["event_types"]["orderPlaced"] > 0
        status = client.status("%s/dt=%s/part-00000.jsonl.gz" % (ROOT, day))
        assert status["owner"] == "shop" and status["replication"] == 2


def test_rerunning_a_day_replaces_its_partition(hdfs_cluster):
    client = WebHdfsClient(hdfs_cluster.webhdfs_url)
    rerun = ["--start-date", "2026-02-10", "--days", "1", "--events-per-day", "3000", "--users", "200",
             "--part-lines", "1000", "--webhdfs-url", hdfs_cluster.webhdfs_url]
    assert shop_main.main(rerun) == 0
    before = partition_bytes(client, "2026-02-10")
    success_time = client.status(ROOT + "/dt=2026-02-10/_SUCCESS")["modificationTime"]
    # Something foreign in the partition (e.g. a part of an older, larger run) must not survive.
    client.create(ROOT + "/dt=2026-02-10/part-00042.jsonl.gz", gzip.compress(b'{"stale": true}\n'))

    assert shop_main.main(rerun) == 0
    after = partition_bytes(client, "2026-02-10")
    assert after == before
    assert client.status(ROOT + "/dt=2026-02-10/_SUCCESS")["modificationTime"] >= success_time
    assert client.status(ROOT + "/dt=2026-02-10/part-00042.jsonl.gz") is None
    assert dt.date.fromisoformat(json.loads(after["_SUCCESS"])["dt"]) == dt.date(2026, 2, 10)
