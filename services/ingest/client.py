"""Sends N sample UserEvents to the ingestion service and prints what came back.

    bazel run //services/ingest:client -- --count 1000
    bazel run //services/ingest:client -- --count 10 --unary --target 127.0.0.1:50051 --api-key dpk_...

The API key comes from --api-key, DP_INGEST_API_KEY, or the development key file the service
writes on its first local start (<workspace>/.state/ingest/dev-api-key).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
import time
import uuid
from typing import Optional, Sequence

from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from services.ingest import api_keys, client_lib, config, sample_events


def parser(env) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client", description="Send sample UserEvents to the ingestion service.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:%s" % (env.get("DP_INGEST_PORT") or config.DEFAULT_PORT),
                   help="host:port of the service")
    p.add_argument("--api-key", default=env.get("DP_INGEST_API_KEY"), help="API key [env DP_INGEST_API_KEY]")
    p.add_argument("--api-key-file", type=pathlib.Path,
                   default=config.default_state_dir(env) / api_keys.DEV_KEY_FILE_NAME,
                   help="file holding the API key, when --api-key is not given")
    p.add_argument("--tenant", default=api_keys.DEV_TENANT, help="tenant_id of the events (the key's tenant)")
    p.add_argument("--count", type=int, default=1000, help="events to send")
    p.add_argument("--batch-size", type=int, default=500, help="events per batch")
    p.add_argument("--unary", action="store_true", help="use Publish per batch instead of PublishStream")
    p.add_argument("--bearer", action="store_true", help="send the key as 'authorization: Bearer' instead of x-api-key")
    p.add_argument("--tls-ca", type=pathlib.Path, help="PEM CA that signed the server's certificate (enables TLS)")
    p.add_argument("--tls-cert", type=pathlib.Path, help="client certificate for mTLS")
    p.add_argument("--tls-key", type=pathlib.Path, help="client key for mTLS")
    p.add_argument("--server-name", help="expected TLS server name, when it differs from the target host")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    env = os.environ
    args = parser(env).parse_args(argv)
    key = args.api_key
    if not key:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError:
            print("client: no API key: pass --api-key or DP_INGEST_API_KEY (create one with bazel run "
                  "//services/ingest:api_keys -- add --tenant <tenant>), or start the service once locally so that "
                  "it writes %s" % args.api_key_file, file=sys.stderr)
            return 2
    read = lambda path: path.read_bytes() if path else None  # noqa: E731
    prefix = "client-%s" % uuid.uuid4().hex[:8]
    batches = list(sample_events.batches(args.count, args.batch_size, args.tenant, prefix=prefix))
    began = time.monotonic()
    with client_lib.IngestClient(args.target, key, root_certificates=read(args.tls_ca), private_key=read(args.tls_key),
                                 certificate_chain=read(args.tls_cert), server_name=args.server_name,
                                 bearer=args.bearer) as client:
        try:
            outcome = client.deliver(batches, unary=args.unary)
        except Exception as err:  # grpc.RpcError (not retryable) or TimeoutError
            code = getattr(err, "code", lambda: None)()
            details = getattr(err, "details", lambda: str(err))()
            print("client: failed: %s %s" % (code.name if code else type(err).__name__, details), file=sys.stderr)
            return 1
    seconds = time.monotonic() - began
    reasons = collections.Counter(pb.RejectionReason.Name(r.reason) for r in outcome.rejections())
    print("sent=%d accepted=%d rejected=%d batches=%d calls=%d retries=%d seconds=%.2f events_per_second=%.0f"
          % (args.count, outcome.accepted(), sum(reasons.values()), len(batches), outcome.calls, outcome.retries,
             seconds, args.count / seconds if seconds else 0))
    for reason, n in sorted(reasons.items()):
        print("rejected reason=%s count=%d" % (reason, n))
    for rejection in outcome.rejections()[:5]:
        print("example index=%d event_id=%s reason=%s detail=%r" % (
            rejection.index, rejection.event_id, pb.RejectionReason.Name(rejection.reason), rejection.detail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
