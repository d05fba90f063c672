"""The commerce marts job on a Spark standalone cluster of the test fixtures (master + 2 workers,
deploy/spark/standalone.py) over the fixtures' HDFS with 3 DataNodes loses a DataNode, then a Spark
worker (SIGKILL each); the scenario and what must hold are in marts_faults.py. Here the killed
DataNode stays down: the job runs its whole day on two.
"""

from deploy.common.process import tail
from tests.cluster import marts_faults
from tests.cluster.spark_cluster import standalone_cluster
from tests.fixtures.hdfs_cluster import hdfs_cluster_factory  # noqa: F401 (a fixture)
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)


def test_the_marts_job_survives_a_datanode_and_a_worker_sigkill(tmp_path, hdfs_cluster_factory, postgres_server):  # noqa: F811
    hdfs = hdfs_cluster_factory(datanodes=3)
    assert hdfs.config.effective_replication == 3  # every block stays readable with one DataNode gone
    day = marts_faults.prepare(hdfs.hdfs_url, hdfs.webhdfs_url)
    datanode = hdfs.datanodes[2]

    def kill_datanode():
        datanode.kill()
        datanode.wait()

    with standalone_cluster(tmp_path, workers=2, worker_memory=marts_faults.WORKER_MEMORY) as spark:
        marts_faults.run(day, spark, kill_datanode, postgres_server.app_dsn, tmp_path)
    assert spark.exit_code == 0, tail(spark.log, 40)
    assert datanode.poll() is not None  # the job ran its whole day on two DataNodes
