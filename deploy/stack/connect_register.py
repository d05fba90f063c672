"""The Debezium connector registration (deploy/connect/register.py) as a one-shot step of the local stack."""

import sys

from deploy.connect import register

if __name__ == "__main__":
    sys.exit(register.main())
