#!/bin/sh
echo "coverage is not available in this repository (see docs/adr/0001-bazel-4-from-debian.md)" >&2
exit 1
