"""The grpcurl calls documented in README.md ("Calling it"), run by the real grpcurl.

The service runs as its own process (the `//services/ingest` main, reflection on) against a real
Kafka broker. The README block is executed by bash as written; only the address 127.0.0.1:50051
becomes the test service's free port, `grpcurl` is the pinned binary (@grpcurl) and
`bazel run //services/ingest:sample_payload --` runs that program from this test's runfiles.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from datapipelines import topics
from datapipelines.behaviour.v1 import user_event_pb2 as ue
from services.ingest.servicer import HEADER_EVENT_ID, HEADER_TENANT
from services.ingest.testing import KeyRing, header, read_all
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)

README = pathlib.Path("services/ingest/README.md")
MARKER = "<!-- grpcurl_test:"
DOCUMENTED_ADDRESS = "127.0.0.1:50051"
GRPCURL = os.path.abspath(os.environ["GRPCURL_BINARY"])
SERVICE = "datapipelines.ingest.v1.IngestService"

# Stand-ins for the two commands a reader has on PATH; each grpcurl call keeps its arguments
# and output in $OUT/<n>.args and $OUT/<n>.out.
PRELUDE = r"""
set -euo pipefail
calls=0
grpcurl() {
  calls=$((calls + 1))
  printf '%s\n' "$@" > "$OUT/$calls.args"
  "$GRPCURL_BINARY" "$@" > "$OUT/$calls.out"
}
bazel() {
  if [ "$#" -ge 3 ] && [ "$1" = run ] && [ "$2" = //services/ingest:sample_payload ] && [ "$3" = -- ]; then
    shift 3
    "$PYTHON" -m services.ingest.sample_payload "$@"
  else
    echo "grpcurl_test: the README block runs an unexpected command: bazel $*" >&2
    return 99
  fi
}
"""


def documented_block() -> str:
    """The ```sh block right after the grpcurl_test marker in README.md."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    assert lines[start + 1] == "```sh", "the marker in %s must be followed by a ```sh block" % README
    end = lines.index("```", start + 2)
    return "\n".join(lines[start + 2:end]) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workspace-like directory: the key store and .state/ingest/dev-api-key of tenant dev."""
    root = tmp_path_factory.mktemp("workspace")
    state = root / ".state" / "ingest"
    state.mkdir(parents=True)
    key = KeyRing(state / "api_keys.jsonl").add("dev")
    (state / "dev-api-key").write_text(key + "\n")
    return root


@pytest.fixture(scope="module")
def service(kafka_broker, workdir, tmp_path_factory):  # noqa: F811
    """The real service process on a free port; yields 127.0.0.1:<port>."""
    log = tmp_path_factory.mktemp("ingest") / "ingest.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from services.ingest import main; sys.exit(main.main(sys.argv[1:]))",
             "--bootstrap", kafka_broker.bootstrap, "--port", "0", "--metrics-port", "-1",
             "--api-keys-file", str(workdir / ".state" / "ingest" / "api_keys.jsonl")],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = None
        deadline = time.monotonic() + 90
        while port is None:
            assert process.poll() is None, "the service exited:\n" + log.read_text()
            assert time.monotonic() < deadline, "the service did not start:\n" + log.read_text()
            match = re.search(r"^ingest: serving on [\d.]+:(\d+)", log.read_text(), re.MULTILINE)
            port = int(match.group(1)) if match else None
            time.sleep(0.1)
        yield "127.0.0.1:%d" % port
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_block(block: str, address: str, workdir: pathlib.Path, out: pathlib.Path) -> subprocess.CompletedProcess:
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "GRPCURL_BINARY": GRPCURL, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(["bash", "-c", PRELUDE + block.replace(DOCUMENTED_ADDRESS, address)], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)


def test_documented_calls_work(kafka_broker, service, workdir, tmp_path):  # noqa: F811
    block = documented_block()
    assert block.count(DOCUMENTED_ADDRESS) == 4, "expected list, describe, health and publish:\n" + block
    result = run_block(block, service, workdir, tmp_path / "calls")
    assert result.returncode == 0, "the README block failed:\n%s\n%s" % (result.stdout, result.stderr)
    out = tmp_path / "calls"
    args = {n: (out / ("%d.args" % n)).read_text().splitlines() for n in range(1, 5)}
    answer = {n: (out / ("%d.out" % n)).read_text() for n in range(1, 5)}
    assert not (out / "5.args").exists()
    print("\n".join("$ grpcurl %s\n%s" % (" ".join(args[n]), answer[n]) for n in range(1, 5)))

    # list: every service the server registers, found through reflection.
    assert args[1][-1] == "list"
    assert set(answer[1].split()) >= {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}

    # describe: both RPCs with their message types.
    assert args[2][-2:] == ["describe", SERVICE]
    assert ("rpc Publish ( .datapipelines.ingest.v1.PublishRequest ) "
            "returns ( .datapipelines.ingest.v1.PublishResponse );") in answer[2]
    assert ("rpc PublishStream ( stream .datapipelines.ingest.v1.PublishStreamRequest ) "
            "returns ( stream .datapipelines.ingest.v1.PublishStreamResponse );") in answer[2]

    assert json.loads(answer[3]) == {"status": "SERVING"}

    # publish: authenticated with the development key, acknowledged, and in Kafka once.
    key = (workdir / ".state" / "ingest" / "dev-api-key").read_text().strip()
    assert ["-H", "x-api-key: " + key] == args[4][1:3]
    assert args[4][-1] == SERVICE + "/Publish"
    ack = json.loads(answer[4])["ack"]
    event_id = ack["batch_id"]
    assert event_id.startswith("cli-")
    assert ack.get("accepted_count") == 1 and not ack.get("rejections"), ack
    records = [r for r in read_all(kafka_broker.bootstrap, topics.BEHAVIOUR_EVENTS.name)
               if header(r, HEADER_EVENT_ID) == event_id]
    assert len(records) == 1
    assert header(records[0], HEADER_TENANT) == "dev"
    event = ue.UserEvent.FromString(records[0].value())
    assert event.event_id == event_id and event.event_type == ue.USER_EVENT_TYPE_PAGE_VIEW


def test_wrong_key_is_unauthenticated(service, workdir, tmp_path):
    """The documented publish with a key the store does not know fails as the README says."""
    block = documented_block().replace('KEY="$(cat .state/ingest/dev-api-key)"', 'KEY="dpk_nope_nope"')
    assert "dpk_nope_nope" in block
    result = run_block(block, service, workdir, tmp_path / "calls")
    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr, result.stderr
    assert (tmp_path / "calls" / "4.args").exists() and not (tmp_path / "calls" / "4.out").read_text().strip()
