"""The behaviour job on a Flink standalone cluster of the test fixtures loses a TaskManager, then a
Kafka broker (SIGKILL each) mid-stream; the scenario and what must hold are in behaviour_faults.py.
Here the clusters are the fixtures' own: JobManager + 2 TaskManagers x 2 slots (deploy/flink) and a
3-node Kafka cluster (deploy/kafka); the killed broker stays down.
"""

from tests.cluster import behaviour_faults
from tests.fixtures.flink_cluster import flink_cluster_factory  # noqa: F401 (a fixture)
from tests.fixtures.kafka_cluster import kafka_cluster_factory  # noqa: F401 (a fixture)


def test_behaviour_job_survives_a_taskmanager_and_a_broker_sigkill(kafka_cluster_factory, flink_cluster_factory,  # noqa: F811
                                                                   tmp_path):
    kafka_cluster = kafka_cluster_factory(nodes=3)

    def kill_broker(node_id: int) -> None:
        assert kafka_cluster.kill(node_id) == -9

    # The Flink cluster starts once the job's first input is in Kafka.
    behaviour_faults.run(kafka_cluster.bootstrap, kill_broker,
                         lambda: flink_cluster_factory(taskmanagers=2, slots=2), tmp_path)
