"""Reading a raw partition from real files: gzip and plain parts, line numbers across splits."""

import datetime
import gzip

import pytest
from pyspark.sql import SparkSession

from jobs.commerce.marts import io


@pytest.fixture(scope="module")
def spark():
    session = (SparkSession.builder.master("local[2]").appName("io_test")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               # Tiny splits: a plain file is read as several blocks by different tasks.
               .config("spark.sql.files.maxPartitionBytes", "64")
               .config("spark.sql.files.openCostInBytes", "1")
               .getOrCreate())
    yield session
    session.stop()


def write_partition(root, day, success=True):
    part = root / ("dt=%s" % day)
    part.mkdir(parents=True)
    with gzip.open(part / "part-00000.jsonl.gz", "wb") as out:
        out.write(b"".join(b'{"gz": %d}\n' % i for i in range(1, 51)))
    (part / "part-00001.jsonl").write_bytes(b"".join(b'{"plain": %d}\n' % i for i in range(1, 41)))
    if success:
        (part / "_SUCCESS").write_bytes(b"")
    return part


def test_every_line_carries_its_file_and_number(spark, tmp_path):
    part = write_partition(tmp_path, "2026-11-18")
    lines = io.read_raw_lines(spark, "file://%s" % part)
    got = [(r.source_file.rsplit("/", 1)[1], r.line_number, r.value) for r in lines.collect()]
    expected = [("part-00000.jsonl.gz", i, '{"gz": %d}' % i) for i in range(1, 51)]
    expected += [("part-00001.jsonl", i, '{"plain": %d}' % i) for i in range(1, 41)]
    assert sorted(got) == sorted(expected)


def test_a_partition_without_success_marker_is_refused(spark, tmp_path):
    part = write_partition(tmp_path, "2026-11-19", success=False)
    with pytest.raises(io.SourceError, match="no _SUCCESS marker"):
        io.read_raw_lines(spark, "file://%s" % part)
    assert io.read_raw_lines(spark, "file://%s" % part, require_success=False).count() == 90


def test_a_missing_partition_is_a_clear_error(spark, tmp_path):
    with pytest.raises(io.SourceError, match="dt=2026-11-20"):
        io.read_raw_lines(spark, "file://%s/dt=2026-11-20" % tmp_path, require_success=False)


def test_delete_statements_cover_every_mart_table():
    statements = " ".join(str(s.as_string(None)) if hasattr(s, "as_string") else str(s)
                          for s, _ in io._delete_statements(datetime.date(2026, 11, 18)))
    for table in io.TABLE_COLUMNS:
        assert table in statements, table


def test_no_connect_server_is_a_clear_error_at_once():
    import socket

    from jobs.commerce.marts.config import JobConfig

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = JobConfig(day=datetime.date(2026, 11, 18), raw_root="file:///r", postgres_dsn="x",
                    spark_remote="sc://127.0.0.1:%d" % port)
    with pytest.raises(io.SourceError, match="no Spark Connect server at sc://127.0.0.1:%d" % port):
        io.spark_session(cfg)
