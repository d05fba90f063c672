"""The Spark standalone launcher: master + 2 workers come up, a SIGKILLed worker is replaced,
SIGTERM stops everything cleanly. (The commerce job across a worker kill: spark_fault_test.)"""

import os
import signal

from deploy.common.process import port_is_open, tail
from tests.cluster.spark_cluster import standalone_cluster


def test_master_and_two_workers_survive_a_worker_sigkill(tmp_path):
    with standalone_cluster(tmp_path, workers=2) as spark:
        status = spark.status()
        assert status["status"] == "ALIVE"
        assert status["aliveworkers"] == 2
        assert all(w["host"] == "127.0.0.1" for w in status["workers"])

        pids = spark.pids()
        os.kill(pids["worker-1"], signal.SIGKILL)
        spark.wait(lambda: spark.pids()["worker-1"] != pids["worker-1"], 60, "the launcher to restart worker-1")
        # The master registers the new worker (the killed one turns DEAD once its heartbeat times out).
        spark.wait(lambda: len([w for w in spark.status()["workers"] if w["state"] == "ALIVE"
                                and w["id"] not in {x["id"] for x in status["workers"]}]) == 1,
                   180, "the new worker to register")
    assert spark.exit_code == 0, tail(spark.log, 40)
    assert not port_is_open("127.0.0.1", spark.port)
    assert "spark standalone cluster stopped" in spark.log.read_text()
