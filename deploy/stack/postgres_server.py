"""The PostgreSQL launcher (deploy/postgres/server.py) as a program of the local stack."""

import sys

from deploy.postgres import server

if __name__ == "__main__":
    sys.exit(server.main())
