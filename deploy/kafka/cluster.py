"""A 3-node Apache Kafka 4 cluster (KRaft, combined broker+controller nodes) on loopback.

    bazel run //deploy/kafka:cluster -- --help

Each node is a `KafkaBroker` (deploy/kafka/broker.py) with its own JVM, ports and storage under
`<state-dir>/kafka-cluster/node-<id>/kafka/`; the nodes form a static controller quorum of all
three (a majority of 2 keeps the metadata quorum up when one node dies) and replicate every topic
three times with `min.insync.replicas=2` by default, so an `acks=all` write survives the loss of
any one node. The cluster id is kept in `<state-dir>/kafka-cluster/cluster.id`: a later start
reuses the nodes' data. SIGTERM or Ctrl-C stops the nodes in order (controlled shutdowns).
"""

import argparse
import dataclasses
import logging
import os
import pathlib
import sys
import threading
from typing import List, Optional, Sequence, Tuple

from deploy.common import process
from deploy.kafka.broker import CLEAN_EXIT_CODES, BrokerConfig, BrokerError, KafkaBroker, new_cluster_id

LOG = logging.getLogger("kafka_cluster")

DEFAULT_NODES = 3
DEFAULT_BASE_PORT = 29092  # clients on 29092..29094, controllers on 29192..29194
CONTROLLER_PORT_OFFSET = 100


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The cluster profile; `node_config(i)` is what node i runs with."""

    state_dir: pathlib.Path
    ports: Tuple[int, ...] = (29092, 29093, 29094)  # client (PLAINTEXT) port per node
    controller_ports: Tuple[int, ...] = (29192, 29193, 29194)
    host: str = "127.0.0.1"
    heap: str = "384m"
    replication_factor: int = 3
    min_insync_replicas: int = 2
    partitions: int = 3  # default partition count of topics created without one
    start_timeout: float = 120.0
    overrides: Tuple[Tuple[str, str], ...] = ()

    def __post_init__(self):
        nodes = len(self.ports)
        if nodes < 1 or len(self.controller_ports) != nodes:
            raise ValueError("want one client and one controller port per node, got %s and %s"
                             % (self.ports, self.controller_ports))
        if len(set(self.ports + self.controller_ports)) != 2 * nodes:
            raise ValueError("ports must be distinct: %s %s" % (self.ports, self.controller_ports))
        if not 1 <= self.replication_factor <= nodes:
            raise ValueError("replication factor %d needs 1..%d nodes" % (self.replication_factor, nodes))
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError("min.insync.replicas %d must be 1..replication factor %d"
                             % (self.min_insync_replicas, self.replication_factor))

    @property
    def cluster_dir(self) -> pathlib.Path:
        return self.state_dir / "kafka-cluster"

    @property
    def node_ids(self) -> Tuple[int, ...]:
        return tuple(range(1, len(self.ports) + 1))

    @property
    def bootstrap(self) -> str:
        return ",".join("%s:%d" % (self.host, port) for port in self.ports)

    def node_config(self, node_id: int, cluster_id: str) -> BrokerConfig:
        index = node_id - 1
        return BrokerConfig(
            state_dir=self.cluster_dir / ("node-%d" % node_id),
            port=self.ports[index],
            controller_port=self.controller_ports[index],
            host=self.host,
            heap=self.heap,
            start_timeout=self.start_timeout,
            node_id=node_id,
            quorum_voters=tuple(
                (node, self.host, port) for node, port in zip(self.node_ids, self.controller_ports)
            ),
            cluster_id=cluster_id,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
            internal_topic_partitions=min(3, len(self.ports)),
            overrides=(("num.partitions", str(self.partitions)),) + tuple(self.overrides),
        )


def with_base_port(state_dir: pathlib.Path, base_port: int, nodes: int = DEFAULT_NODES, **settings) -> ClusterConfig:
    """Clients on base..base+n-1, controllers on base+100..base+100+n-1."""
    return ClusterConfig(
        state_dir=state_dir,
        ports=tuple(base_port + i for i in range(nodes)),
        controller_ports=tuple(base_port + CONTROLLER_PORT_OFFSET + i for i in range(nodes)),
        **settings,
    )


class KafkaCluster:
    """The nodes of one cluster: `start()` returns when every node serves, `stop()` ends them.

    `kill(node_id)` and `restart(node_id)` are for fault tests: a SIGKILL, and a start of the
    same node on its kept storage.
    """

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.cluster_id: Optional[str] = None
        self.nodes: dict = {}

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    def __enter__(self) -> "KafkaCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _cluster_id(self) -> str:
        id_file = self.config.cluster_dir / "cluster.id"
        if id_file.exists():
            return id_file.read_text(encoding="utf-8").strip()
        self.config.cluster_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        id_file.write_text(cluster_id + "\n", encoding="utf-8")
        return cluster_id

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        """Launches every node, then waits for each: a node needs a quorum of peers to be ready."""
        self.cluster_id = self._cluster_id()
        try:
            for node_id in self.config.node_ids:
                node = KafkaBroker(self.config.node_config(node_id, self.cluster_id))
                self.nodes[node_id] = node
                node.launch()
            for node in self.nodes.values():
                node.wait_ready(cancel)
        except BaseException:
            self.stop()
            raise
        LOG.info("event=cluster_ready bootstrap=%s nodes=%d cluster_id=%s",
                 self.bootstrap, len(self.nodes), self.cluster_id)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id]

    def running(self) -> List[int]:
        return [i for i, node in self.nodes.items() if node.process is not None and node.process.poll() is None]

    def kill(self, node_id: int) -> Optional[int]:
        return self.nodes[node_id].kill()

    def restart(self, node_id: int, cancel: Optional[threading.Event] = None) -> None:
        node = self.nodes[node_id]
        node.stop()
        node.start(cancel)

    def stop(self) -> dict:
        """Signals every node, then waits for each (controlled shutdowns); exit codes by node.

        One at a time would leave the last node waiting for a controller quorum that is gone.
        """
        for node in self.nodes.values():
            node.terminate()
        return {node_id: node.stop() for node_id, node in sorted(self.nodes.items())}


def _override(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("want KEY=VALUE, got %r" % text)
    return key.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster's flags, shared with deploy/local/cluster.py."""
    parser.add_argument("--kafka-nodes", type=int, default=process.env_int("DP_KAFKA_CLUSTER_NODES", DEFAULT_NODES),
                        help="number of combined broker+controller nodes [env DP_KAFKA_CLUSTER_NODES, default 3]")
    parser.add_argument("--kafka-base-port", type=int,
                        default=process.env_int("DP_KAFKA_CLUSTER_BASE_PORT", DEFAULT_BASE_PORT, "a port number"),
                        help="node i listens on BASE+i-1 (clients) and BASE+100+i-1 (controller) "
                             "[env DP_KAFKA_CLUSTER_BASE_PORT, default 29092]")
    parser.add_argument("--kafka-replication-factor", type=int, default=3,
                        help="default and internal-topic replication factor [3]")
    parser.add_argument("--kafka-min-insync-replicas", type=int, default=2, help="min.insync.replicas [2]")
    parser.add_argument("--kafka-heap", default=os.environ.get("DP_KAFKA_CLUSTER_HEAP", "384m"),
                        help="JVM maximum heap per node [env DP_KAFKA_CLUSTER_HEAP, default 384m]")
    parser.add_argument("--kafka-override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="extra server.properties entry for every node (repeatable)")


def add_state_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_STATE_DIR"]) if os.environ.get("DP_STATE_DIR") else None,
                        help="state root [env DP_STATE_DIR, default <workspace>/.state]")


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    state_dir = (args.state_dir or process.workspace_state_dir()).absolute()
    try:
        return with_base_port(
            state_dir, args.kafka_base_port, args.kafka_nodes,
            heap=args.kafka_heap,
            replication_factor=args.kafka_replication_factor,
            min_insync_replicas=args.kafka_min_insync_replicas,
            overrides=tuple(args.kafka_override),
        )
    except ValueError as err:
        raise SystemExit("bad Kafka cluster settings: %s" % err) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> ClusterConfig:
    parser = argparse.ArgumentParser(
        prog="cluster",
        description="Run a 3-node Apache Kafka 4 cluster (KRaft, combined broker+controller nodes, "
                    "replication factor 3, min.insync.replicas 2) on loopback until SIGTERM/Ctrl-C.",
        epilog="State lives in <state-dir>/kafka-cluster/ and survives restarts; delete it for an empty "
               "cluster. Example: bazel run //deploy/kafka:cluster -- --kafka-base-port 39092",
    )
    add_state_argument(parser)
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def run_until_signalled(cluster: KafkaCluster) -> int:
    """Starts the cluster, reports, waits for SIGTERM/SIGINT, stops; the process exit code."""
    stop_requested = process.stop_on_signals(LOG)
    try:
        cluster.start(cancel=stop_requested)
    except BrokerError as err:
        print("kafka cluster failed to start: %s" % err, file=sys.stderr)
        return 1
    print("kafka cluster up: bootstrap=%s (%d nodes, state: %s)"
          % (cluster.bootstrap, len(cluster.nodes), cluster.config.cluster_dir), flush=True)
    while not stop_requested.wait(0.5):
        down = [i for i in cluster.nodes if i not in cluster.running()]
        if down:
            print("kafka node(s) %s exited by themselves; stopping the cluster" % down, file=sys.stderr)
            cluster.stop()
            return 1
    codes = cluster.stop()
    unclean = {node: code for node, code in codes.items() if code not in CLEAN_EXIT_CODES}
    if unclean:
        print("kafka nodes stopped uncleanly: %s" % unclean, file=sys.stderr)
        return 1
    print("kafka cluster stopped", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run_until_signalled(KafkaCluster(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
