"""Settings of the WebSocket gateway: flags over environment over defaults, checked at start-up.

Defaults fit the local stack with no configuration: WebSocket and HTTP on 127.0.0.1:8765, the
ingestion service on 127.0.0.1:50051, its development API key from
<workspace>/.state/ingest/dev-api-key (written by `bazel run //services/ingest` on its first
start), ten emulated users at 20 events/s in total until stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import socket
from typing import Mapping, Optional, Sequence

from services.ingest import api_keys as ingest_api_keys
from services.ingest import config as ingest_config

DEFAULT_PORT = 8765
DEFAULT_INGEST_TARGET = "127.0.0.1:%d" % ingest_config.DEFAULT_PORT


class ConfigError(ValueError):
    """The settings cannot work; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str
    port: int  # 0: any free port
    ingest_target: str
    api_key: str = dataclasses.field(repr=False)
    api_key_source: str  # where the key came from, for the start-up log (never the key)
    tenant: str
    producer_id: str
    users: int  # emulated users; 0 runs the gateway for real clients only
    rate: float  # emulated events per second over all users
    duration: float  # seconds of emulation; 0 until stopped
    late_fraction: float  # emulated events whose client_time lags behind (late, out of order)
    max_lateness_seconds: float
    seed: int
    batch_size: int  # events per PublishBatch
    linger_ms: int  # longest wait for a batch to fill
    max_unacked_batches: int  # batches on the stream awaiting their ack
    queue_events: int  # events waiting for a batch; a full queue pushes back on senders
    max_pending_per_client: int  # unacknowledged events of one WebSocket client before reading it pauses
    max_message_bytes: int
    drain_seconds: float
    exit_after_emulation: bool
    log_level: str

    def describe(self) -> str:
        return ("listen=%s:%d ingest=%s api_key_source=%s tenant=%s producer_id=%s users=%d rate=%g duration=%g "
                "late_fraction=%g batch_size=%d linger_ms=%d max_unacked_batches=%d queue_events=%d"
                % (self.host, self.port, self.ingest_target, self.api_key_source, self.tenant, self.producer_id,
                   self.users, self.rate, self.duration, self.late_fraction, self.batch_size, self.linger_ms,
                   self.max_unacked_batches, self.queue_events))


def _number(env: Mapping[str, str], name: str, default, kind=int):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit("ws_gateway: %s=%r is not a %s" % (name, raw, "whole number" if kind is int else "number")) from None


def default_key_file(env: Mapping[str, str]) -> pathlib.Path:
    return ingest_config.default_state_dir(env) / ingest_api_keys.DEV_KEY_FILE_NAME


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ws_gateway",
        description="The WebSocket gateway of the behaviour pipeline: accepts browser clients speaking the JSON "
                    "event protocol on /ws (see README.md), emulates N users with a behaviour model, and forwards "
                    "every event over one gRPC PublishStream to the ingestion service; acknowledges an event to "
                    "its client once the ingestion service has it in Kafka. Serves a page on / to click around, "
                    "/healthz and /metrics.",
        epilog="Example: bazel run //services/ws_gateway -- --users 50 --rate 200 --duration 60 "
               "(after bazel run //deploy/kafka:broker and bazel run //services/ingest); open http://127.0.0.1:%d/"
               % DEFAULT_PORT,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=env.get("DP_WS_HOST") or "127.0.0.1", help="listen address [env DP_WS_HOST]")
    p.add_argument("--port", type=int, default=_number(env, "DP_WS_PORT", DEFAULT_PORT),
                   help="port of /ws, /, /healthz and /metrics; 0 for any free port [env DP_WS_PORT]")
    p.add_argument("--ingest-target", default=env.get("DP_WS_INGEST_TARGET") or DEFAULT_INGEST_TARGET,
                   help="host:port of the ingestion service [env DP_WS_INGEST_TARGET]")
    p.add_argument("--api-key-file", type=pathlib.Path,
                   default=pathlib.Path(env["DP_WS_API_KEY_FILE"]) if env.get("DP_WS_API_KEY_FILE") else None,
                   help="file holding the ingestion API key (used when DP_WS_API_KEY is not set); default "
                        "<workspace>/.state/ingest/%s, the development key the ingestion service writes on its "
                        "first local start [env DP_WS_API_KEY_FILE]" % ingest_api_keys.DEV_KEY_FILE_NAME)
    p.add_argument("--tenant", default=env.get("DP_WS_TENANT") or ingest_api_keys.DEV_TENANT,
                   help="tenant_id of every event: the API key's tenant [env DP_WS_TENANT]")
    p.add_argument("--producer-id", default=env.get("DP_WS_PRODUCER_ID") or "ws-gateway-%s" % socket.gethostname(),
                   help="producer_id of every envelope [env DP_WS_PRODUCER_ID]")
    p.add_argument("--users", type=int, default=_number(env, "DP_WS_USERS", 10),
                   help="emulated users; 0 for real clients only [env DP_WS_USERS]")
    p.add_argument("--rate", type=float, default=_number(env, "DP_WS_RATE", 20.0, float),
                   help="emulated events per second over all users [env DP_WS_RATE]")
    p.add_argument("--duration", type=float, default=_number(env, "DP_WS_DURATION", 0.0, float),
                   help="seconds of emulation; 0 until stopped [env DP_WS_DURATION]")
    p.add_argument("--late-fraction", type=float, default=_number(env, "DP_WS_LATE_FRACTION", 0.02, float),
                   help="share of emulated events sent late, with a client_time behind the user's clock "
                        "[env DP_WS_LATE_FRACTION]")
    p.add_argument("--max-lateness-seconds", type=float,
                   default=_number(env, "DP_WS_MAX_LATENESS_SECONDS", 120.0, float),
                   help="largest lag of a late event [env DP_WS_MAX_LATENESS_SECONDS]")
    p.add_argument("--seed", type=int, default=_number(env, "DP_WS_SEED", 7),
                   help="seed of the behaviour model [env DP_WS_SEED]")
    p.add_argument("--batch-size", type=int, default=_number(env, "DP_WS_BATCH_SIZE", 200),
                   help="events per PublishBatch (at most the service's --max-batch-events) [env DP_WS_BATCH_SIZE]")
    p.add_argument("--linger-ms", type=int, default=_number(env, "DP_WS_LINGER_MS", 20),
                   help="longest wait for a batch to fill [env DP_WS_LINGER_MS]")
    p.add_argument("--max-unacked-batches", type=int, default=_number(env, "DP_WS_MAX_UNACKED_BATCHES", 8),
                   help="batches sent and not yet acknowledged (keep below the service's "
                        "--max-batches-per-stream) [env DP_WS_MAX_UNACKED_BATCHES]")
    p.add_argument("--queue-events", type=int, default=_number(env, "DP_WS_QUEUE_EVENTS", 10_000),
                   help="events waiting for a batch; when full, clients and emulated users wait "
                        "[env DP_WS_QUEUE_EVENTS]")
    p.add_argument("--max-pending-per-client", type=int, default=_number(env, "DP_WS_MAX_PENDING_PER_CLIENT", 1000),
                   help="unacknowledged events of one WebSocket client before the gateway stops reading it "
                        "[env DP_WS_MAX_PENDING_PER_CLIENT]")
    p.add_argument("--max-message-bytes", type=int, default=_number(env, "DP_WS_MAX_MESSAGE_BYTES", 64 * 1024),
                   help="largest WebSocket message; larger ones close the connection (1009) "
                        "[env DP_WS_MAX_MESSAGE_BYTES]")
    p.add_argument("--drain-seconds", type=float, default=_number(env, "DP_WS_DRAIN_SECONDS", 15.0, float),
                   help="on SIGTERM, time to flush queued events and collect their acks [env DP_WS_DRAIN_SECONDS]")
    p.add_argument("--exit-after-emulation", action="store_true",
                   default=env.get("DP_WS_EXIT_AFTER_EMULATION", "") in ("1", "true", "yes"),
                   help="stop the gateway (gracefully) when --duration has passed [env DP_WS_EXIT_AFTER_EMULATION]")
    p.add_argument("--log-level", default=env.get("DP_WS_LOG_LEVEL") or "INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="[env DP_WS_LOG_LEVEL]")
    return p


def read_api_key(env: Mapping[str, str], key_file: Optional[pathlib.Path]) -> tuple[str, str]:
    """(key, source): DP_WS_API_KEY, else the key file (given or the local development one)."""
    if env.get("DP_WS_API_KEY"):
        return env["DP_WS_API_KEY"].strip(), "env DP_WS_API_KEY"
    path = key_file or default_key_file(env)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(
            "no ingestion API key: cannot read %s (%s); set DP_WS_API_KEY or --api-key-file (create a key with: "
            "bazel run //services/ingest:api_keys -- add --tenant <tenant>), or start the ingestion service once "
            "locally (bazel run //services/ingest) so that it writes its development key there"
            % (path, err.strerror or err)) from None
    if not key:
        raise ConfigError("API key file %s is empty" % path)
    return key, "file %s" % path


def load(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> Settings:
    env = os.environ if env is None else env
    p = parser(env)
    args = p.parse_args(argv)
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append("--port must be 0..65535")
    if ":" not in args.ingest_target:
        problems.append("--ingest-target must be host:port, got %r" % args.ingest_target)
    if args.users < 0:
        problems.append("--users must not be negative")
    if args.rate <= 0:
        problems.append("--rate must be positive")
    if args.duration < 0:
        problems.append("--duration must not be negative")
    if not 0 <= args.late_fraction <= 1:
        problems.append("--late-fraction must be within 0..1")
    if args.max_lateness_seconds <= 0:
        problems.append("--max-lateness-seconds must be positive")
    if not 1 <= args.batch_size <= 100_000:
        problems.append("--batch-size must be 1..100000")
    if args.linger_ms < 0:
        problems.append("--linger-ms must not be negative")
    if args.max_unacked_batches < 1:
        problems.append("--max-unacked-batches must be at least 1")
    if args.queue_events < args.batch_size:
        problems.append("--queue-events must be at least --batch-size")
    if args.max_pending_per_client < 1:
        problems.append("--max-pending-per-client must be at least 1")
    if args.max_message_bytes < 256:
        problems.append("--max-message-bytes must be at least 256")
    if args.drain_seconds <= 0:
        problems.append("--drain-seconds must be positive")
    if args.exit_after_emulation and not (args.users and args.duration):
        problems.append("--exit-after-emulation needs --users and --duration")
    if not args.tenant or not args.producer_id:
        problems.append("--tenant and --producer-id must not be empty")
    if problems:
        p.error("; ".join(problems))
    try:
        api_key, source = read_api_key(env, args.api_key_file)
    except ConfigError as err:
        p.exit(2, "ws_gateway: error: %s\n" % err)
    return Settings(
        host=args.host, port=args.port, ingest_target=args.ingest_target, api_key=api_key, api_key_source=source,
        tenant=args.tenant, producer_id=args.producer_id, users=args.users, rate=args.rate, duration=args.duration,
        late_fraction=args.late_fraction, max_lateness_seconds=args.max_lateness_seconds, seed=args.seed,
        batch_size=args.batch_size, linger_ms=args.linger_ms, max_unacked_batches=args.max_unacked_batches,
        queue_events=args.queue_events, max_pending_per_client=args.max_pending_per_client,
        max_message_bytes=args.max_message_bytes, drain_seconds=args.drain_seconds,
        exit_after_emulation=args.exit_after_emulation, log_level=args.log_level,
    )
