"""The behaviour job on a Flink cluster loses a TaskManager, then a Kafka broker (SIGKILL each)
mid-stream: the scenario, run on clusters of the test fixtures (flink_fault_test.py) and on the
whole multi-node profile (local_profile_test.py).

The cluster (JobManager + 2 TaskManagers x 2 slots) reads from and writes to a 3-node Kafka
cluster (replication factor 3, min ISR 2). The job is the real one (//jobs/behaviour/metrics,
submitted with --jobmanager), checkpointing every second with transactional (exactly-once) Kafka
sinks. Once it has published its first windows, the TaskManager that runs its tasks is SIGKILLed;
the job restarts from its last checkpoint on the remaining slots (the launcher also brings the
TaskManager back). Once it runs again, the broker leading the partition its metrics sink writes
first is SIGKILLed, and the rest of the events are produced to the brokers left. Then every window
and session must be published exactly once and equal the independent recomputation that the job's
own integration test uses (the events and the comparison helpers are that test's, not copies).

Phase B of the integration test (events behind the watermark) is left out on purpose: Flink does
not checkpoint watermarks, so right after a restore events that were late before the failure
are on time again; what is late then depends on timing, which a test must not assert.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
import urllib.request
import uuid
from typing import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from datapipelines import kafka, topics
from deploy.common import process
from jobs.behaviour.metrics import reference
from jobs.behaviour.metrics.kafka_integration_test import (
    IDLE_TIMEOUT_S, JOB, LATE_TOPIC, LATENESS_S, Outputs, _message, _metric_key, _phases, _received_sessions)


def _declare_topics(bootstrap: str) -> None:
    """The registry's topics with the cluster's default replication (3) instead of 1."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [NewTopic(t.name, t.partitions, -1, config=t.config())
              for t in (topics.BEHAVIOUR_EVENTS, topics.BEHAVIOUR_METRICS, topics.BEHAVIOUR_SESSIONS)]
    wanted.append(NewTopic(LATE_TOPIC, 1, -1))
    for future in admin.create_topics(wanted, operation_timeout=60).values():
        future.result(timeout=90)


def _submit(flink, bootstrap: str, tmp_path) -> str:
    """Submits the job (detached) and returns its id from the cluster's REST API."""
    suffix = uuid.uuid4().hex[:8]
    log = tmp_path / "submit.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the job's own set only
    command = [
        str(JOB), "--jobmanager", flink.jobmanager, "--bootstrap", bootstrap, "--startup-mode", "earliest-offset",
        "--state-dir", str(tmp_path / "job-state"), "--checkpoint-interval-seconds", "1",
        "--allowed-lateness-seconds", str(LATENESS_S), "--idle-timeout-seconds", str(IDLE_TIMEOUT_S),
        "--parallelism", "2", "--group-id", "cluster-" + suffix, "--transactional-id-prefix", "cluster-" + suffix,
        # After a failover the sink may leave a transaction nobody owns (a fenced commit of a reused
        # transactional id); it holds read_committed readers back until the broker times it out.
        "--transaction-timeout-ms", "120000",
    ]
    with open(log, "wb") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=600,
                              preexec_fn=process.die_with_parent()).returncode
    assert code == 0, "submission failed (exit %s):\n%s" % (code, process.tail(log, 40))
    jobs = flink.rest("/jobs/overview")["jobs"]
    assert len(jobs) == 1, jobs
    return jobs[0]["jid"]


def _busy_taskmanager(flink, job_id: str) -> str:
    """The TaskManager running most of the job's tasks now, from where each vertex's subtasks run.
    The scheduler may put every task on one of the two TaskManagers (killing the idle one would
    test nothing), and a TaskManager's used slots are no proof: slots are allocated before tasks
    are deployed, and an excess allocation is released again. Its id is the launcher's name for it."""
    hosts = collections.Counter()
    for vertex in _job(flink, job_id)["vertices"]:
        where = flink.rest("/jobs/%s/vertices/%s/taskmanagers" % (job_id, vertex["id"]))
        hosts.update(tm["taskmanager-id"] for tm in where["taskmanagers"] if tm["status"] == "RUNNING")
    assert hosts, _job(flink, job_id)
    return hosts.most_common(1)[0][0]


def _cancel(flink, job_id: str) -> None:
    request = urllib.request.Request("%s/jobs/%s?mode=cancel" % (flink.rest_url, job_id), method="PATCH")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as err:  # the cluster may be gone already: nothing left to cancel
        print("cancelling job %s: %s" % (job_id, err))


def _leader(bootstrap: str, topic: str, partition: int) -> int:
    """The node id leading `partition` of `topic` now."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)
    return metadata.topics[topic].partitions[partition].leader


def _job(flink, job_id: str) -> dict:
    return flink.rest("/jobs/%s" % job_id)


def _restarts(flink, job_id: str) -> int:
    values = flink.rest("/jobs/%s/metrics?get=numRestarts" % job_id)
    return int(float(values[0]["value"])) if values else 0


def _wait_outputs(outputs: Outputs, done, timeout: float, flink, job_id: str, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outputs.poll(1.0)
        if done():
            return
        state = _job(flink, job_id)["state"]
        if state in ("FAILED", "CANCELED", "FINISHED"):
            pytest.fail("the job is %s while waiting for %s:\n%s" % (state, what, flink.logs_tail()))
    pytest.fail("timed out after %.0f s waiting for %s (%d metric rows, %d sessions):\n%s" % (
        timeout, what, len(outputs.metrics()), len(outputs.sessions()), flink.logs_tail()))


def run(bootstrap: str, kill_broker: Callable[[int], None], flink_cluster: Callable[[], object], tmp_path) -> str:
    """The scenario on a running Kafka cluster (`kill_broker(node_id)` SIGKILLs one node) and a Flink
    cluster: `flink_cluster()` returns it (a tests.fixtures.flink_cluster.FlinkClusterProcess,
    started then or attached), once the job's first input is in Kafka. Fails the test when
    anything is lost, doubled or different; returns a one-line summary."""
    _declare_topics(bootstrap)
    a, _late_phase, c = _phases()
    producer = Producer(kafka.producer_config(bootstrap))

    def produce(events):
        for event in events:
            kafka.produce(producer, topics.BEHAVIOUR_EVENTS, _message(event))
        assert producer.flush(60) == 0

    produce(a)
    flink = flink_cluster()
    outputs = Outputs(bootstrap)
    job_id = _submit(flink, bootstrap, tmp_path)
    try:
        # Mid-stream: the job has committed its first windows, more are to come.
        _wait_outputs(outputs, lambda: len(outputs.metrics()) > 0, 300, flink, job_id, "the first windows")
        published_before_kill = len(outputs.metrics())
        victim_tm = _busy_taskmanager(flink, job_id)
        killed_pid = flink.kill_taskmanager(victim_tm)

        # The job fails over and runs again (on the other TaskManager's free slots or the new one).
        deadline = time.monotonic() + 240
        while not (_restarts(flink, job_id) >= 1 and _job(flink, job_id)["state"] == "RUNNING"
                   and all(v["status"] == "RUNNING" for v in _job(flink, job_id)["vertices"])):
            assert time.monotonic() < deadline, "the job did not recover within 240 s:\n%s" % flink.logs_tail()
            outputs.poll(1.0)
        assert flink.pids()[victim_tm] != killed_pid  # the launcher restarted it

        # A broker dies as well: the leader of the metrics topic's partition 0, where the job's
        # transactional sink writes; its partitions and the transaction coordinators move to the others.
        victim = _leader(bootstrap, topics.BEHAVIOUR_METRICS.name, 0)
        kill_broker(victim)
        deadline = time.monotonic() + 120
        while _leader(bootstrap, topics.BEHAVIOUR_METRICS.name, 0) in (victim, -1):
            assert time.monotonic() < deadline, "no new leader for the metrics partition within 120 s"
            outputs.poll(1.0)

        produce(c)  # moves the watermark past every window and session of A
        expected_metrics = reference.metrics(a)
        expected_sessions = {s.session_id: s for s in reference.sessions(a)}
        _wait_outputs(outputs, lambda: len(outputs.sessions()) >= len(expected_sessions)
                      and len(outputs.metrics()) >= len(expected_metrics), 300, flink, job_id,
                      "every window and session of phase A")
        outputs.poll(3.0)  # duplicates would arrive now
        summary = ("published %d metric rows before the TaskManager kill, %d in all; %d sessions; restarts=%d; "
                   "broker %d killed" % (published_before_kill, len(outputs.metrics()), len(outputs.sessions()),
                                         _restarts(flink, job_id), victim))
        print(summary)

        observed = collections.Counter(_metric_key(m) for _, _, m in outputs.metrics())
        assert [k for k, n in observed.items() if n > 1] == []
        got = {_metric_key(m): (m.event_count, m.unique_user_count, m.unique_session_count) for _, _, m in outputs.metrics()}
        assert got == expected_metrics

        sessions = collections.Counter(m.session_id for _, _, m in outputs.sessions())
        assert [k for k, n in sessions.items() if n > 1] == []
        got_sessions = _received_sessions(outputs)
        assert got_sessions == expected_sessions
        return summary
    finally:
        _cancel(flink, job_id)  # a cluster that outlives the test (the profile) must not keep running it
