"""attach.find without a running stack: it answers at once, with the reason, and starts nothing."""

import subprocess
import sys
import time

import psutil

from deploy.stack import attach, catalog
from deploy.stack.state import Record, StateDir


def test_no_state_directory_means_no_stack(tmp_path):
    began = time.monotonic()
    stack, why = attach.find(tmp_path / "nothing")
    assert stack is None and "no stack was started in %s" % (tmp_path / "nothing") in why
    assert time.monotonic() - began < 5
    assert not (tmp_path / "nothing").exists()


def test_a_stack_whose_processes_are_gone_is_not_running(tmp_path):
    state = StateDir(tmp_path)
    state.write_stack(["kafka", "analytics"], catalog.port_plan())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state.write_record(Record(name="kafka", pid=gone.pid, create_time=time.time() - 5, argv=["kafka"], cwd=".",
                              ports={"port": 9092}, started_at=time.time() - 5, log="kafka.log"))
    stack, why = attach.find(tmp_path)
    assert stack is None and why == "no service of the stack in %s is running" % tmp_path


def test_a_live_service_is_found_with_its_ports_and_health(tmp_path):
    state = StateDir(tmp_path)
    plan = catalog.port_plan({"analytics": 1})  # nothing answers on port 1: the check fails
    state.write_stack(["kafka", "analytics"], plan)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state.write_record(Record(name="analytics", pid=live.pid, create_time=psutil.Process(live.pid).create_time(),
                                  argv=["analytics"], cwd=".", ports={"port": 1}, started_at=time.time(),
                                  log="analytics.log"))
        stack, why = attach.find(tmp_path)
        assert why == "" and stack.pids == {"analytics": live.pid}
        assert stack.analytics_url == "http://127.0.0.1:1"
        assert "analytics" in stack.unhealthy and stack.unhealthy["kafka"] == "not running"
        assert not stack.has(["analytics"]) and stack.missing(["kafka", "analytics"]) == ["kafka", "analytics"]
    finally:
        live.kill()
        live.wait()
