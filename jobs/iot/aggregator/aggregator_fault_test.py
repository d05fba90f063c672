"""kill -9 of the aggregator mid-stream, twice; after restarts the aggregates still equal the brute force.

Small batches make many transactions; the process is killed (SIGKILL, no clean-up) once some
have committed, restarted with the same instance id (it fences the dead incarnation and aborts
its open transaction), killed again, restarted, and run to the end of the input. The final
aggregates must equal the recomputation (nothing lost, nothing counted twice), and no
(window, version) may appear twice among the committed aggregates (no batch committed twice).
"""

import time

from datapipelines import kafka, topics
from jobs.iot.aggregator import kafka_harness as h
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)

GROUP = "iot-aggregator-fault"


def committed_total(bootstrap):
    return sum(h.committed(bootstrap, GROUP).values())


def test_kill_minus_9_mid_stream_loses_and_doubles_nothing(kafka_broker, tmp_path):  # noqa: F811
    bootstrap = kafka_broker.bootstrap
    kafka.ensure_topics(bootstrap)
    scenario = h.build_scenario(sites=8, devices_per_site=5, ticks=240, seed=5)
    h.produce(bootstrap, scenario.records)
    total = len(scenario.records)
    args = ("--batch-size", "150", "--commit-interval-seconds", "0.2")
    kills = []
    for fraction in (0.25, 0.6):
        aggregator = h.Aggregator(bootstrap, GROUP, tmp_path / "aggregator.log", *args)
        deadline = time.monotonic() + 180
        # Under load the previous instance may already have passed this fraction before its
        # kill: the new one must commit something of its own before it is killed too.
        target = max(fraction * total, kills[-1] + 1 if kills else 0)
        while committed_total(bootstrap) < target:
            assert aggregator.process.poll() is None, (tmp_path / "aggregator.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.05)
        aggregator.kill()
        kills.append(committed_total(bootstrap))
    assert kills[0] < kills[1] < total, f"kills at {kills} of {total}: not mid-stream"

    aggregator = h.Aggregator(bootstrap, GROUP, tmp_path / "aggregator.log", *args)
    try:
        h.wait_until_consumed(bootstrap, GROUP, aggregator.process)
    finally:
        code = aggregator.stop()
    log = (tmp_path / "aggregator.log").read_text()
    assert code == 0, log[-3000:]
    assert log.count("event=restore_done") >= 3

    latest, repeated = h.latest_aggregates(h.read_all(bootstrap, topics.IOT_AGGREGATES, "fault-aggregates"))
    problems = h.compare(latest, h.expected_aggregates(scenario))
    assert not problems, "\n".join(problems[:20])
    assert repeated == 0, f"{repeated} (window, version) pairs written twice"
    dead = h.read_all(bootstrap, kafka.dead_letter_topic(topics.IOT_CDC_READINGS), "fault-dlq", quiet=1.0)
    assert len(dead) == len(scenario.dead_letter_reasons)
