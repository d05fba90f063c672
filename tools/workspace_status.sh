#!/usr/bin/env bash
# Workspace status for stamped builds (`bazel build --config=stamp ...`, see .bazelrc): prints
# "KEY value" lines Bazel writes to bazel-out/stable-status.txt. Only stamped actions read them
# (the git revision label of //deploy/images), so unstamped builds stay reproducible.
set -uo pipefail

commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  tree_state=dirty
elif [ "$commit" != unknown ]; then
  tree_state=clean
else
  tree_state=unknown
fi
echo "STABLE_GIT_COMMIT $commit"
echo "STABLE_GIT_TREE_STATE $tree_state"
