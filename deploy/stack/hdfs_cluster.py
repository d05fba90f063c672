"""The HDFS launcher (deploy/hdfs/cluster.py) as a program of the local stack."""

import sys

from deploy.hdfs import cluster

if __name__ == "__main__":
    sys.exit(cluster.main())
