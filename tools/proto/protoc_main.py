"""protoc from grpcio-tools, with its bundled well-known types (google/protobuf/*.proto) on the path."""

import os
import sys

import grpc_tools
from grpc_tools import protoc


def main() -> int:
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    return protoc.main(["protoc"] + sys.argv[1:] + ["-I" + well_known])


if __name__ == "__main__":
    sys.exit(main())
