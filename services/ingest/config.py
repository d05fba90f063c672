"""Settings of the ingestion service: flags over environment over defaults, checked at start-up.

Defaults run the local stack with no configuration: gRPC on 127.0.0.1:50051, Kafka on
127.0.0.1:9092, metrics on 127.0.0.1:9471, API keys in <workspace>/.state/ingest/api_keys.jsonl
(created with a development key, loudly, when missing; see README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Mapping, Optional, Sequence

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9471
KEYS_FILE_NAME = "api_keys.jsonl"


def default_state_dir(env: Mapping[str, str]) -> pathlib.Path:
    """<workspace>/.state/ingest under `bazel run`, else .state/ingest below the current directory."""
    workspace = env.get("BUILD_WORKSPACE_DIRECTORY")
    return pathlib.Path(workspace or ".") / ".state" / "ingest"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one event and one batch may be; validation and the servicer read these."""

    max_event_bytes: int = 64 * 1024
    max_batch_events: int = 1000
    # client_time may be at most this far ahead of the server's clock ...
    max_clock_skew_seconds: float = 300.0
    # ... and at most this old (offline buffers are replayed late, but not forever).
    max_event_age_seconds: float = 7 * 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str
    port: int
    bootstrap: str
    metrics_host: str
    metrics_port: Optional[int]  # None: no metrics endpoint; 0: any free port
    api_keys_file: pathlib.Path
    api_keys_file_is_default: bool  # a missing default file is created with a dev key, a given one is an error
    tls_cert: Optional[pathlib.Path]
    tls_key: Optional[pathlib.Path]
    tls_client_ca: Optional[pathlib.Path]
    limits: Limits
    max_in_flight_events: int
    max_batches_per_stream: int
    admission_wait_seconds: float
    ack_timeout_seconds: float
    delivery_timeout_seconds: float
    retry_after_ms: int
    dedup_window_events: int
    dedup_window_seconds: float
    max_request_bytes: int
    drain_seconds: float
    log_level: str

    def describe(self) -> str:
        tls = "off"
        if self.tls_cert:
            tls = "mtls" if self.tls_client_ca else "tls"
        return (
            "listen=%s:%d bootstrap=%s metrics=%s tls=%s api_keys_file=%s max_in_flight_events=%d "
            "max_batch_events=%d max_event_bytes=%d dedup_window=%d/%ss ack_timeout=%ss"
            % (self.host, self.port, self.bootstrap,
               ("%s:%d" % (self.metrics_host, self.metrics_port)) if self.metrics_port is not None else "off",
               tls, self.api_keys_file, self.max_in_flight_events, self.limits.max_batch_events,
               self.limits.max_event_bytes, self.dedup_window_events, _g(self.dedup_window_seconds),
               _g(self.ack_timeout_seconds))
        )


def _g(value: float) -> str:
    return "%g" % value


def _number(env: Mapping[str, str], name: str, default, kind=int):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit("ingest: %s=%r is not a %s" % (name, raw, "whole number" if kind is int else "number")) from None


def _path(env: Mapping[str, str], name: str) -> Optional[pathlib.Path]:
    return pathlib.Path(env[name]) if env.get(name) else None


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ingest",
        description="The gRPC ingestion service: authenticates producers by API key, validates every event "
                    "against its contract and writes accepted events to Kafka (rejected ones to the dead-letter "
                    "topic), acknowledging a batch only after Kafka has it.",
        epilog="Example: bazel run //services/ingest   (Kafka on 127.0.0.1:9092 from //deploy/kafka:broker); "
               "then bazel run //services/ingest:client -- --count 1000",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    limits = Limits()
    p.add_argument("--host", default=env.get("DP_INGEST_HOST") or "127.0.0.1",
                   help="gRPC listen address [env DP_INGEST_HOST]")
    p.add_argument("--port", type=int, default=_number(env, "DP_INGEST_PORT", DEFAULT_PORT),
                   help="gRPC port, 0 for any free port [env DP_INGEST_PORT]")
    p.add_argument("--bootstrap", default=env.get("DP_KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP,
                   help="Kafka bootstrap servers [env DP_KAFKA_BOOTSTRAP]")
    p.add_argument("--metrics-host", default=env.get("DP_INGEST_METRICS_HOST") or "127.0.0.1",
                   help="Prometheus /metrics listen address [env DP_INGEST_METRICS_HOST]")
    p.add_argument("--metrics-port", type=int, default=_number(env, "DP_INGEST_METRICS_PORT", DEFAULT_METRICS_PORT),
                   help="Prometheus /metrics port, 0 for any free port, -1 for none [env DP_INGEST_METRICS_PORT]")
    p.add_argument("--api-keys-file", type=pathlib.Path, default=_path(env, "DP_INGEST_API_KEYS_FILE"),
                   help="API key store (JSON lines of salted SHA-256 hashes, written by "
                        "`bazel run //services/ingest:api_keys -- add ...`); default "
                        "<workspace>/.state/ingest/%s, created with a development key when missing "
                        "[env DP_INGEST_API_KEYS_FILE]" % KEYS_FILE_NAME)
    p.add_argument("--tls-cert", type=pathlib.Path, default=_path(env, "DP_INGEST_TLS_CERT"),
                   help="PEM server certificate chain; enables TLS (with --tls-key) [env DP_INGEST_TLS_CERT]")
    p.add_argument("--tls-key", type=pathlib.Path, default=_path(env, "DP_INGEST_TLS_KEY"),
                   help="PEM private key of --tls-cert [env DP_INGEST_TLS_KEY]")
    p.add_argument("--tls-client-ca", type=pathlib.Path, default=_path(env, "DP_INGEST_TLS_CLIENT_CA"),
                   help="PEM CA bundle; when set, clients must present a certificate it signed (mTLS) "
                        "[env DP_INGEST_TLS_CLIENT_CA]")
    p.add_argument("--max-event-bytes", type=int,
                   default=_number(env, "DP_INGEST_MAX_EVENT_BYTES", limits.max_event_bytes),
                   help="largest payload of one event [env DP_INGEST_MAX_EVENT_BYTES]")
    p.add_argument("--max-batch-events", type=int,
                   default=_number(env, "DP_INGEST_MAX_BATCH_EVENTS", limits.max_batch_events),
                   help="most events in one batch [env DP_INGEST_MAX_BATCH_EVENTS]")
    p.add_argument("--max-clock-skew-seconds", type=float,
                   default=_number(env, "DP_INGEST_MAX_CLOCK_SKEW_SECONDS", limits.max_clock_skew_seconds, float),
                   help="reject events whose client_time is further ahead of the server's clock "
                        "[env DP_INGEST_MAX_CLOCK_SKEW_SECONDS]")
    p.add_argument("--max-event-age-seconds", type=float,
                   default=_number(env, "DP_INGEST_MAX_EVENT_AGE_SECONDS", limits.max_event_age_seconds, float),
                   help="reject events whose client_time is older [env DP_INGEST_MAX_EVENT_AGE_SECONDS]")
    p.add_argument("--max-in-flight-events", type=int, default=_number(env, "DP_INGEST_MAX_IN_FLIGHT_EVENTS", 50_000),
                   help="events admitted but not yet confirmed by Kafka, over all callers; beyond it callers "
                        "wait up to --admission-wait-seconds, then get RESOURCE_EXHAUSTED "
                        "[env DP_INGEST_MAX_IN_FLIGHT_EVENTS]")
    p.add_argument("--max-batches-per-stream", type=int,
                   default=_number(env, "DP_INGEST_MAX_BATCHES_PER_STREAM", 16),
                   help="unacknowledged batches one PublishStream may have in progress; further batches "
                        "are not read until one is acknowledged [env DP_INGEST_MAX_BATCHES_PER_STREAM]")
    p.add_argument("--admission-wait-seconds", type=float,
                   default=_number(env, "DP_INGEST_ADMISSION_WAIT_SECONDS", 2.0, float),
                   help="how long a batch waits for in-flight capacity [env DP_INGEST_ADMISSION_WAIT_SECONDS]")
    p.add_argument("--ack-timeout-seconds", type=float, default=_number(env, "DP_INGEST_ACK_TIMEOUT_SECONDS", 10.0, float),
                   help="how long a call waits for Kafka to confirm its batch before answering UNAVAILABLE "
                        "[env DP_INGEST_ACK_TIMEOUT_SECONDS]")
    p.add_argument("--delivery-timeout-seconds", type=float,
                   default=_number(env, "DP_INGEST_DELIVERY_TIMEOUT_SECONDS", 120.0, float),
                   help="how long the producer keeps trying to write an event (message.timeout.ms) "
                        "[env DP_INGEST_DELIVERY_TIMEOUT_SECONDS]")
    p.add_argument("--retry-after-ms", type=int, default=_number(env, "DP_INGEST_RETRY_AFTER_MS", 1000),
                   help="retry hint sent in the `retry-after-ms` trailer of UNAVAILABLE and RESOURCE_EXHAUSTED "
                        "[env DP_INGEST_RETRY_AFTER_MS]")
    p.add_argument("--dedup-window-events", type=int, default=_number(env, "DP_INGEST_DEDUP_WINDOW_EVENTS", 200_000),
                   help="event ids remembered per tenant for duplicate detection [env DP_INGEST_DEDUP_WINDOW_EVENTS]")
    p.add_argument("--dedup-window-seconds", type=float,
                   default=_number(env, "DP_INGEST_DEDUP_WINDOW_SECONDS", 3600.0, float),
                   help="how long an accepted event id is remembered [env DP_INGEST_DEDUP_WINDOW_SECONDS]")
    p.add_argument("--max-request-bytes", type=int, default=_number(env, "DP_INGEST_MAX_REQUEST_BYTES", 16 * 1024 * 1024),
                   help="largest gRPC message accepted [env DP_INGEST_MAX_REQUEST_BYTES]")
    p.add_argument("--drain-seconds", type=float, default=_number(env, "DP_INGEST_DRAIN_SECONDS", 20.0, float),
                   help="on SIGTERM, time allowed for in-flight batches and the producer flush "
                        "[env DP_INGEST_DRAIN_SECONDS]")
    p.add_argument("--log-level", default=env.get("DP_INGEST_LOG_LEVEL") or "INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="[env DP_INGEST_LOG_LEVEL]")
    return p


def load(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> Settings:
    env = os.environ if env is None else env
    p = parser(env)
    args = p.parse_args(argv)
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append("--port must be 0..65535")
    if not -1 <= args.metrics_port <= 65535:
        problems.append("--metrics-port must be -1..65535")
    if bool(args.tls_cert) != bool(args.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        problems.append("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
        if path and not path.is_file():
            problems.append("%s %s is not a readable file" % (flag, path))
    if not 1 <= args.max_event_bytes <= 1024 * 1024:
        problems.append("--max-event-bytes must be 1..1048576 (a Kafka record must fit)")
    if not 1 <= args.max_batch_events <= 100_000:
        problems.append("--max-batch-events must be 1..100000")
    if args.max_in_flight_events < args.max_batch_events:
        problems.append("--max-in-flight-events must be at least --max-batch-events")
    if args.max_batches_per_stream < 1:
        problems.append("--max-batches-per-stream must be at least 1")
    if args.dedup_window_events < 0 or args.dedup_window_seconds < 0:
        problems.append("--dedup-window-events and --dedup-window-seconds must not be negative")
    for flag, value in (("--ack-timeout-seconds", args.ack_timeout_seconds),
                        ("--delivery-timeout-seconds", args.delivery_timeout_seconds),
                        ("--drain-seconds", args.drain_seconds),
                        ("--max-clock-skew-seconds", args.max_clock_skew_seconds),
                        ("--max-event-age-seconds", args.max_event_age_seconds)):
        if value <= 0:
            problems.append("%s must be positive" % flag)
    if args.admission_wait_seconds < 0 or args.retry_after_ms < 0:
        problems.append("--admission-wait-seconds and --retry-after-ms must not be negative")
    if problems:
        p.error("; ".join(problems))
    keys_file = args.api_keys_file or default_state_dir(env) / KEYS_FILE_NAME
    return Settings(
        host=args.host,
        port=args.port,
        bootstrap=args.bootstrap,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        api_keys_file=keys_file.resolve(),
        api_keys_file_is_default=args.api_keys_file is None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        limits=Limits(
            max_event_bytes=args.max_event_bytes,
            max_batch_events=args.max_batch_events,
            max_clock_skew_seconds=args.max_clock_skew_seconds,
            max_event_age_seconds=args.max_event_age_seconds,
        ),
        max_in_flight_events=args.max_in_flight_events,
        max_batches_per_stream=args.max_batches_per_stream,
        admission_wait_seconds=args.admission_wait_seconds,
        ack_timeout_seconds=args.ack_timeout_seconds,
        delivery_timeout_seconds=args.delivery_timeout_seconds,
        retry_after_ms=args.retry_after_ms,
        dedup_window_events=args.dedup_window_events,
        dedup_window_seconds=args.dedup_window_seconds,
        max_request_bytes=args.max_request_bytes,
        drain_seconds=args.drain_seconds,
        log_level=args.log_level,
    )
