"""The IoT CDC pipeline as one unit of real processes on loopback:

    PostgreSQL -> Kafka Connect + Debezium -> Kafka -> aggregator -> analytics service (chdb)

`IotPipeline.start()` brings the components up in dependency order on free ports under one
state directory and waits for each one's real health check; `stop()` ends them in reverse
order. The demo, the end-to-end tests and the benchmark drive the pipeline through this class,
and can kill and restart the aggregator or the analytics service to inject crashes.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Optional

from datapipelines import kafka
from deploy.common.process import free_port, free_ports
from deploy.common.service import ServiceProcess
from deploy.connect import connectors, register
from deploy.connect.worker import ConnectWorker, WorkerConfig
from deploy.kafka.broker import BrokerConfig, KafkaBroker
from deploy.pipelines.base import StreamingPipeline
from deploy.postgres.server import PostgresConfig, PostgresServer

AGGREGATOR_BINARY = "jobs/iot/aggregator/aggregator"


@dataclasses.dataclass(frozen=True)
class IotPipelineConfig:
    state_dir: pathlib.Path
    grace_seconds: float = 30.0
    aggregator_batch_size: int = 5000
    aggregator_commit_interval_seconds: float = 0.5
    analytics_batch_max_ms: int = 300
    exactly_once_source: bool = True
    # An existing Kafka to run on (e.g. the multi-node profile's cluster); None starts one broker.
    bootstrap: Optional[str] = None


class IotPipeline(StreamingPipeline):
    """All components of the IoT pipeline; `say` receives one line per step."""

    STOP_ORDER = (("aggregator", "terminate"), ("analytics", "terminate"), ("connect", "stop"),
                  ("postgres", "stop"), ("broker", "stop"))

    def __init__(self, config: IotPipelineConfig, say: Callable[[str], None] = print):
        super().__init__(config, say)
        self.broker: Optional[KafkaBroker] = None
        self.postgres: Optional[PostgresServer] = None
        self.connect: Optional[ConnectWorker] = None
        self.aggregator: Optional[ServiceProcess] = None
        self._aggregator_port = free_port()

    # --- addresses ------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap or self.broker.bootstrap

    @property
    def app_dsn(self) -> str:
        return self.postgres.app_dsn

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "IotPipeline":
        state = self.config.state_dir
        try:
            if self.config.bootstrap:
                self.say(f"kafka: the cluster on {self.bootstrap}")
            else:
                port, controller_port = free_ports(2)
                self.broker = self._timed("kafka", lambda: _started(KafkaBroker(
                    BrokerConfig(state_dir=state, port=port, controller_port=controller_port))))
                self.say(f"kafka {self.broker.version} on {self.bootstrap}")
            self.postgres = self._timed("postgres", lambda: _started(PostgresServer(
                PostgresConfig(state_dir=state, port=0))))
            self.say(f"postgresql {self.postgres.version} on 127.0.0.1:{self.postgres.port}")
            kafka.ensure_topics(self.bootstrap)
            self.connect = self._timed("connect", lambda: _started(ConnectWorker(WorkerConfig(
                state_dir=state, bootstrap=self.bootstrap, rest_port=free_port(),
                exactly_once=self.config.exactly_once_source))))
            status = self._timed("debezium", lambda: register.register_iot_readings_cdc(
                self.connect.rest_url, self.bootstrap, connectors.PostgresSource.from_dsn(self.postgres.cdc_dsn),
                self.config.exactly_once_source))
            self.say(f"kafka connect {self.connect.kafka_version} + debezium {self.connect.debezium_version} "
                     f"on {self.connect.rest_url}: connector {status.connector_state}, tasks {','.join(status.task_states)}")
            self.start_analytics()
            self.say(f"analytics service (chdb) on {self.analytics_url}")
            self.start_aggregator()
            self.say(f"aggregator (exactly-once) health on http://127.0.0.1:{self._aggregator_port}")
            return self
        except BaseException:
            self.stop()
            raise

    def start_aggregator(self) -> ServiceProcess:
        self.aggregator = ServiceProcess(
            "aggregator",
            [AGGREGATOR_BINARY, "--bootstrap", self.bootstrap, "--http-port", str(self._aggregator_port),
             "--grace-seconds", str(self.config.grace_seconds),
             "--batch-size", str(self.config.aggregator_batch_size),
             "--commit-interval-seconds", str(self.config.aggregator_commit_interval_seconds)],
            self.logs_dir / "aggregator.log",
            health_url=f"http://127.0.0.1:{self._aggregator_port}/readyz",
        )
        self._timed("aggregator", lambda: self.aggregator.start(timeout=120))
        return self.aggregator


def _started(component):
    component.start()
    return component
