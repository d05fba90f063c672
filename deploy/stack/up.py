"""bazel run //deploy:up -- --help (see deploy/stack/README.md)."""

import sys

from deploy.stack import cli

if __name__ == "__main__":
    sys.exit(cli.up_main())
