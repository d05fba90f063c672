"""HDFS with 3 DataNodes loses one (SIGKILL) in the middle of a batch of writes.

Files are written through WebHDFS with replication 3; after a third of them a DataNode dies.
The batch goes on (a client retries a request that the NameNode routed to the dead node before
it noticed), and afterwards every file reads back byte for byte equal to what was written
(the recomputation here is the data itself, kept by the test). Files written before the kill
had a replica on the dead node: their reads must be served by the survivors.
"""

import hashlib
import random
import time

from deploy.hdfs.webhdfs import WebHdfsClient, WebHdfsError
from tests.fixtures.hdfs_cluster import hdfs_cluster_factory  # noqa: F401 (a fixture)

FILES = 24
KILL_AFTER = 8
SIZE = 256 * 1024


def _retrying(action, what: str, timeout: float = 120.0):
    """Retries what fails because the NameNode still routes to the dead DataNode (until it is declared dead)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except (WebHdfsError, OSError) as err:
            if time.monotonic() > deadline:
                raise AssertionError("%s kept failing for %.0f s: %s" % (what, timeout, err)) from err
            time.sleep(1.0)


def test_writes_and_reads_survive_a_datanode_sigkill(hdfs_cluster_factory):  # noqa: F811
    cluster = hdfs_cluster_factory(datanodes=3)
    assert cluster.config.effective_replication == 3
    client = WebHdfsClient(cluster.webhdfs_url)
    rng = random.Random(7)
    written = {}
    for index in range(FILES):
        if index == KILL_AFTER:
            victim = cluster.datanodes[2]
            victim.kill()
            victim.wait()
        path = "/raw/cluster-fault/part-%05d.bin" % index
        data = rng.randbytes(SIZE)
        _retrying(lambda: client.create(path, data, replication=3), "writing " + path)
        written[path] = hashlib.sha256(data).hexdigest()

    listed = {"/raw/cluster-fault/" + entry["pathSuffix"]: entry["length"] for entry in client.list("/raw/cluster-fault")}
    assert listed == {path: SIZE for path in written}
    for path, digest in written.items():
        content = _retrying(lambda: client.read(path), "reading " + path)
        assert hashlib.sha256(content).hexdigest() == digest, path

    # The NameNode notices the loss (the node is declared dead, ~35 s) and keeps serving.
    deadline = time.monotonic() + 120
    while cluster.health()["live_datanodes"] != 2:
        assert time.monotonic() < deadline, "the NameNode still counts %s live DataNodes" % cluster.health()
        time.sleep(2.0)
    # WebHDFS may still redirect a read to the dead node's address for a moment; a retry gets a survivor.
    for path, digest in written.items():
        assert hashlib.sha256(_retrying(lambda: client.read(path), "re-reading " + path)).hexdigest() == digest, path
