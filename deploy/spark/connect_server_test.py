"""The Spark Connect server launcher against a real server JVM (one start for the module)."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from pyspark.sql import SparkSession

from deploy.common import process
from deploy.common.service import runfile
from deploy.spark import connect_server

START_TIMEOUT = 300


@pytest.fixture(scope="module")
def server_cli(tmp_path_factory):
    """The CLI as `bazel run` starts it, on free ports; yields (process, url, ui_port, log)."""
    state = tmp_path_factory.mktemp("spark-state")
    port, ui_port = process.free_ports(2)
    log = state / "cli.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(runfile("deploy/spark/connect_server")), "--port", str(port), "--ui-port", str(ui_port),
             "--state-dir", str(state), "--master", "local[1]", "--driver-memory", "512m"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"spark connect server ready on (sc://\S+)", log.read_text(errors="replace"))
        if match:
            url = match.group(1)
            break
        time.sleep(0.5)
    if url is None:
        proc.kill()
        pytest.fail("no ready line (exit %s):\n%s" % (proc.poll(), process.tail(log, 40)))
    yield proc, url, ui_port, log, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_ready_line_names_the_loopback_address(server_cli):
    _, url, _, _, port = server_cli
    assert url == "sc://127.0.0.1:%d" % port


def test_runs_dataframe_queries_from_a_client(server_cli):
    _, url, _, _, _ = server_cli
    spark = SparkSession.builder.remote(url).getOrCreate()
    try:
        frame = spark.range(10).selectExpr("id % 3 AS k").groupBy("k").count().orderBy("k")
        assert [(r.k, r["count"]) for r in frame.collect()] == [(0, 4), (1, 3), (2, 3)]
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    finally:
        spark.stop()


def test_check_flag_reports_health(server_cli):
    _, url, _, _, _ = server_cli
    ok = subprocess.run([str(runfile("deploy/spark/connect_server")), "--check", url],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("healthy: " + url)
    closed = "sc://127.0.0.1:%d" % process.free_port()
    bad = subprocess.run([sys.executable, "-c", "import sys; from deploy.spark import connect_server; "
                          "sys.exit(connect_server.main(['--check', %r]))" % closed],
                         capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert bad.returncode == 1
    assert "unhealthy: " + closed in bad.stderr


def test_prometheus_metrics_on_the_ui_port(server_cli):
    _, _, ui_port, _, _ = server_cli
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics/prometheus" % ui_port, timeout=30) as response:
        text = response.read().decode()
    assert response.status == 200
    assert "metrics_" in text


def test_refuses_a_port_in_use(server_cli, tmp_path):
    _, _, _, _, port = server_cli
    config = connect_server.ConnectServerConfig(state_dir=tmp_path, port=port)
    with pytest.raises(connect_server.ConnectServerError, match="already in use"):
        connect_server.SparkConnectServer(config).start()


def test_sigterm_stops_it_cleanly(server_cli):
    proc, _, _, log, port = server_cli
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, process.tail(log, 40)
    assert "spark connect server stopped" in log.read_text()
    assert not process.port_is_open("127.0.0.1", port)
