"""The real analytics binary as a subprocess, for the integration tests (needs `:analytics` in data)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from confluent_kafka import Producer

from datapipelines import kafka, topics

BINARY = pathlib.Path("services/analytics/analytics")  # relative to the test's runfiles root


class ServiceProcess:
    def __init__(self, bootstrap: str, data_dir: pathlib.Path, port: int, log_path: pathlib.Path,
                 extra_args=(), env: Optional[dict] = None):
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.process: Optional[subprocess.Popen] = None

    @property
    def base(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def start(self) -> "ServiceProcess":
        env = dict(os.environ)
        env.pop("DP_ANALYTICS_CRASH_POINT", None)
        env.update(self.env)
        args = [str(BINARY.resolve()), "--bootstrap", self.bootstrap, "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--group", "analytics-test"] + self.extra_args
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exited(self) -> Optional[int]:
        return self.process.poll() if self.process else None

    def get(self, path: str, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            body, status = err.read(), err.code
        return status, (json.loads(body) if body.startswith(b"{") else body.decode())

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise AssertionError("analytics exited with %s before ready:\n%s" % (self.exited(), self.log_text()[-4000:]))
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError("analytics not ready after %.0f s:\n%s" % (timeout, self.log_text()[-4000:]))

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples (all label sets, or those carrying every given label value)."""
        _, text = self.get("/metrics")
        total = 0.0
        wanted = ['%s="%s"' % item for item in labels.items()]
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                label_text = line.split("}", 1)[0] if "{" in line else ""
                if all(label in label_text for label in wanted):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def metric_samples(self, name: str) -> list:
        """A metric's samples as (labels, value) pairs, e.g. ({"topic": "t", "partition": "0"}, 0.0)."""
        _, text = self.get("/metrics")
        samples = []
        for line in text.splitlines():
            if line.startswith(name + "{"):
                label_text, value = line[len(name) + 1:].rsplit("} ", 1)
                labels = dict(part.split("=", 1) for part in label_text.split(",") if part)
                samples.append(({key: raw.strip('"') for key, raw in labels.items()}, float(value)))
            elif line.startswith(name + " "):
                samples.append(({}, float(line.rsplit(" ", 1)[1])))
        return samples

    def wait_for(self, condition, timeout: float = 90.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise AssertionError("analytics exited with %s while waiting for %s:\n%s"
                                     % (self.exited(), what, self.log_text()[-4000:]))
            if condition():
                return
            time.sleep(0.25)
        raise AssertionError("timed out waiting for %s:\n%s" % (what, self.log_text()[-4000:]))

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def terminate(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill9(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return self.wait_exit(30)

    def stop_quietly(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def produce(bootstrap: str, messages, raw=(), topic: topics.Topic = topics.IOT_AGGREGATES) -> None:
    """Messages through the project codec on `topic`; `raw` = (key, value, headers) records as they are."""
    producer = Producer(kafka.producer_config(bootstrap))
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(err)

    for message in messages:
        kafka.produce(producer, topic, message, on_delivery=report)
        producer.poll(0)
    for key, value, headers in raw:
        producer.produce(topic.name, key=key, value=value, headers=headers, on_delivery=report)
    assert producer.flush(60) == 0 and not failures, failures


def api_rows(service: ServiceProcess, expected_latest: dict) -> dict:
    """window identity -> the API row, fetched per key and kind over the whole test period."""
    keys = sorted({(m.scope, m.key_id, m.window_kind) for m in expected_latest.values()})
    out = {}
    for scope, key_id, kind in keys:
        status, body = service.get(
            "/api/v1/iot/aggregates", scope={1: "device", 2: "site"}[scope], key_id=key_id,
            window_kind={1: "tumbling", 2: "hopping"}[kind], **{"from": "2023-11-14T00:00:00Z",
                                                                  "to": "2023-11-15T00:00:00Z"})
        assert status == 200, body
        for row in body["rows"]:
            identity = (scope, key_id, kind, row["window_start"], row["window_end"])
            assert identity not in out, "window %s returned twice" % (identity,)
            out[identity] = row
    return out
