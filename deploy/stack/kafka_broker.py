"""The Kafka broker launcher (deploy/kafka/broker.py) as a program of the local stack."""

import sys

from deploy.kafka import broker

if __name__ == "__main__":
    sys.exit(broker.main())
