"""`standalone` starts a real Airflow: healthy, the printed login works, the DAG is parsed, loopback only, clean stop."""

import json
import os
import pathlib
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest

from deploy.common.process import port_is_open
from deploy.common.service import runfile

READY = re.compile(r"airflow ready at (http://127\.0\.0\.1:(\d+))")
LOGIN = re.compile(r"login: admin / (\S+)")


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    state = tmp_path_factory.mktemp("airflow-state")
    output = state / "standalone.out"
    with open(output, "wb") as out:
        process = subprocess.Popen([str(runfile("deploy/airflow/standalone")), "--port", "0", "--state-dir", str(state),
                                    "--start-timeout", "400"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=child_env(DP_AIRFLOW_ADMIN_PASSWORD="s3cret-for-test"))
    deadline = time.monotonic() + 480
    url = password = None
    while time.monotonic() < deadline and process.poll() is None:
        text = output.read_text(errors="replace")
        if READY.search(text) and LOGIN.search(text):
            url, password = READY.search(text).group(1), LOGIN.search(text).group(1)
            break
        time.sleep(1)
    if url is None:
        process.kill()
        pytest.fail("standalone did not get ready:\n" + output.read_text(errors="replace")[-5000:])
    print("real Airflow ready at %s (%s)" % (url, output.read_text().splitlines()[-1]))
    yield {"process": process, "url": url, "password": password, "state": state, "output": output}
    if process.poll() is None:
        process.kill()
        process.wait()


def get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def token(airflow, password):
    request = urllib.request.Request(airflow["url"] + "/auth/token", method="POST",
                                     data=json.dumps({"username": "admin", "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["access_token"]


def test_every_component_is_healthy(airflow):
    health = get(airflow["url"] + "/api/v2/monitor/health")
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health
    check = subprocess.run([str(runfile("deploy/airflow/standalone")), "--check", airflow["url"]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), timeout=120)
    assert check.returncode == 0, check.stdout


def test_the_printed_password_logs_in_and_a_wrong_one_does_not(airflow):
    assert airflow["password"] == "s3cret-for-test"
    assert token(airflow, airflow["password"])
    with pytest.raises(urllib.error.HTTPError) as err:
        token(airflow, "wrong")
    assert err.value.code in (401, 403)


def test_the_commerce_dag_is_parsed_without_import_errors(airflow):
    bearer = token(airflow, airflow["password"])
    deadline = time.monotonic() + 180
    dags = {}
    while time.monotonic() < deadline:
        dags = {d["dag_id"]: d for d in get(airflow["url"] + "/api/v2/dags", bearer)["dags"]}
        if "commerce_daily" in dags:
            break
        time.sleep(2)
    assert "commerce_daily" in dags
    assert dags["commerce_daily"]["is_paused"] is True
    assert get(airflow["url"] + "/api/v2/importErrors", bearer)["import_errors"] == []
    tasks = [t["task_id"] for t in get(airflow["url"] + "/api/v2/dags/commerce_daily/tasks", bearer)["tasks"]]
    assert sorted(tasks) == sorted(["wait_for_partition", "submit_spark_job", "check_quality", "publish",
                                    "refresh_dashboards"])


def test_nothing_listens_beyond_loopback(airflow):
    root = psutil.Process(airflow["process"].pid)
    listening = []
    for proc in [root] + root.children(recursive=True):
        try:
            listening += [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert listening, "the API server should listen"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, listening


def test_sigterm_stops_every_component(airflow):
    process = airflow["process"]
    port = int(READY.search(airflow["output"].read_text()).group(2))
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 4
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    text = airflow["output"].read_text()
    assert "airflow stopped in" in text
    assert not port_is_open("127.0.0.1", port)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    # The state survives for the next start: metadata, secrets, the password.
    assert (pathlib.Path(airflow["state"]) / "airflow.db").exists()
    assert json.loads((pathlib.Path(airflow["state"]) / "simple_auth_manager_passwords.json").read_text()) == {
        "admin": "s3cret-for-test"}
