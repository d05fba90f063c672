"""Build step: the contract facts the behaviour job needs, written as JSON.

    contracts_gen.py > contracts.json      (run by the genrule //jobs/behaviour/metrics:contracts_json)

Runs in the core Python set with the topic registry and the record codec, so the job (flink
set, no protobuf) spells no topic name and computes no fingerprint itself: both come from
datapipelines.topics and datapipelines.records, as for every other producer.
"""

import json
import sys

from datapipelines import records, topics


def contract(topic: topics.Topic) -> dict:
    descriptor = topic.message_class().DESCRIPTOR
    java_package = descriptor.file.GetOptions().java_package
    if not java_package or not descriptor.file.GetOptions().java_multiple_files:
        raise SystemExit(f"{descriptor.file.name}: the job needs java_package and java_multiple_files")
    return {
        "topic": topic.name,
        "message_type": descriptor.full_name,
        "fingerprint": records.fingerprint(descriptor),
        "java_class": f"{java_package}.{descriptor.name}",
    }


def main() -> int:
    data = {
        "events": contract(topics.BEHAVIOUR_EVENTS),
        "late_events": contract(topics.BEHAVIOUR_LATE_EVENTS),
        "metrics": contract(topics.BEHAVIOUR_METRICS),
        "sessions": contract(topics.BEHAVIOUR_SESSIONS),
        "headers": {"schema": records.SCHEMA_HEADER, "fingerprint": records.FINGERPRINT_HEADER},
    }
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
