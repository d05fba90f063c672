"""The Kafka Connect worker launcher (deploy/connect/worker.py) as a program of the local stack."""

import sys

from deploy.connect import worker

if __name__ == "__main__":
    sys.exit(worker.main())
