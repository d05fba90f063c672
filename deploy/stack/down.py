"""bazel run //deploy:down -- --help (see deploy/stack/README.md)."""

import sys

from deploy.stack import cli

if __name__ == "__main__":
    sys.exit(cli.down_main())
