"""The real service in-process for tests: its own event loop on a background thread.

    keys = KeyRing(tmp_path / "keys.jsonl")
    key = keys.add("t1")
    with ServiceThread(settings_for(bootstrap, keys.path)) as service:
        client = IngestClient("127.0.0.1:%d" % service.port, key)
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from typing import Optional, Sequence

from confluent_kafka import Consumer, TopicPartition

from datapipelines import kafka
from services.ingest import api_keys, auth, config
from services.ingest.server import IngestServer


def settings_for(bootstrap: str, keys_file: pathlib.Path, extra: Sequence[str] = ()) -> config.Settings:
    """Settings of a test service: any free port, metrics on any free port, the given key store."""
    return config.load(["--bootstrap", bootstrap, "--port", "0", "--metrics-port", "0",
                        "--api-keys-file", str(keys_file), *extra], env={})


class KeyRing:
    """A key store file for tests; `add` returns the plaintext key."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)

    def add(self, tenant: str, schemas: Sequence[str] = (auth.ANY,), event_types: Sequence[str] = (auth.ANY,)) -> str:
        plaintext, record = auth.new_key(tenant, list(schemas), list(event_types))
        api_keys.append(self.path, record)
        return plaintext


class ServiceThread:
    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server = IngestServer(settings)
        self._thread = threading.Thread(target=self.loop.run_forever, name="ingest-test-loop", daemon=True)
        self._running = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def target(self) -> str:
        return "127.0.0.1:%d" % self.server.port

    def run(self, coroutine, timeout: Optional[float] = 60.0):
        """Runs a coroutine on the service's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function, *args):
        """Calls a plain function on the service's loop (its state is not thread-safe)."""
        async def wrapper():
            return function(*args)
        return self.run(wrapper())

    def start(self) -> "ServiceThread":
        self._thread.start()
        self._running = True
        try:
            self.run(self.server.start())
        except BaseException:
            self.close()
            raise
        return self

    def stop(self, drain_seconds: Optional[float] = None) -> None:
        if self._running:
            self.run(self.server.stop(drain_seconds), timeout=120)
        self.close()

    def close(self) -> None:
        if self._running:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self._running = False

    def __enter__(self) -> "ServiceThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every record of `topic` up to its current end (read_committed), from all partitions."""
    consumer = Consumer(kafka.consumer_config(bootstrap, "ingest-test-reader", **{"enable.partition.eof": False}))
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError("reading %s: partitions %s not read to their end" % (topic, set(partitions) - done))
            for record in consumer.consume(num_messages=5000, timeout=0.5):
                if record.error() is not None:
                    raise RuntimeError(str(record.error()))
                out.append(record)
                if record.offset() + 1 >= ends[record.partition()]:
                    done.add(record.partition())
        return out
    finally:
        consumer.close()


def header(record, name: str) -> Optional[str]:
    for key, value in record.headers() or ():
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None
