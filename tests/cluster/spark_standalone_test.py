"""The Spark standalone launcher: master + 2 workers come up, a SIGKILLed worker is replaced,
SIGTERM stops everything cleanly. (A commerce job across a worker kill is not covered yet.)"""

import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request

from deploy.common.process import die_with_parent, free_ports, port_is_open, tail
from deploy.common.service import runfile

LAUNCHER = "deploy/spark/standalone"


def _status(ui_port: int) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/json/" % ui_port, timeout=5) as response:
        return json.load(response)


def _wait(condition, timeout: float, what: str, log: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for %s:\n%s" % (what, tail(log, 40))
        time.sleep(1.0)


def test_master_and_two_workers_survive_a_worker_sigkill(tmp_path):
    port, ui_port = free_ports(2)
    log = tmp_path / "launcher.out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [str(runfile(LAUNCHER)), "--state-dir", str(tmp_path), "--port", str(port), "--web-ui-port", str(ui_port),
             "--workers", "2", "--worker-memory", "512m"],
            stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent(signal.SIGTERM))
    try:
        _wait(lambda: "spark standalone cluster up: master=spark://127.0.0.1:%d" % port in log.read_text(),
              300, "the ready line", log)
        status = _status(ui_port)
        assert status["status"] == "ALIVE"
        assert status["aliveworkers"] == 2
        assert all(w["host"] == "127.0.0.1" for w in status["workers"])

        pids = json.loads((tmp_path / "spark-standalone" / "processes.json").read_text())
        os.kill(pids["worker-1"], signal.SIGKILL)
        _wait(lambda: json.loads((tmp_path / "spark-standalone" / "processes.json").read_text())["worker-1"]
              != pids["worker-1"], 60, "the launcher to restart worker-1", log)
        # The master registers the new worker (the killed one turns DEAD once its heartbeat times out).
        _wait(lambda: len([w for w in _status(ui_port)["workers"] if w["state"] == "ALIVE"
                           and w["id"] not in {x["id"] for x in status["workers"]}]) == 1,
              180, "the new worker to register", log)
    finally:
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(120)
    assert code == 0, tail(log, 40)
    assert not port_is_open("127.0.0.1", port)
    assert "spark standalone cluster stopped" in log.read_text()
