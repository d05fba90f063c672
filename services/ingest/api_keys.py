"""API key store file, and the CLI that adds, lists and revokes keys.

    bazel run //services/ingest:api_keys -- add --tenant shop-1 --schemas datapipelines.behaviour.v1.UserEvent
    bazel run //services/ingest:api_keys -- list
    bazel run //services/ingest:api_keys -- revoke --key-id 0123456789ab

`add` prints the new key once, on stdout, and appends only its salted hash to the store
(default <workspace>/.state/ingest/api_keys.jsonl, or --file / DP_INGEST_API_KEYS_FILE). The
running service picks up changes within a few seconds. The file is created with mode 0600.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile
from typing import Mapping, Optional, Sequence

from services.ingest import auth, config, validation

FILE_HEADER = (
    "# API keys of the ingestion service: one JSON object per line, salted SHA-256 hashes only.\n"
    "# Written by: bazel run //services/ingest:api_keys -- add --tenant <tenant> --schemas <schema,...>\n"
)
DEV_TENANT = "dev"
DEV_KEY_FILE_NAME = "dev-api-key"


def load(path: pathlib.Path) -> auth.KeyStore:
    """The key store in `path`; KeyStoreError naming the line when it is malformed."""
    return auth.KeyStore.parse(pathlib.Path(path).read_text(encoding="utf-8"), str(path))


def append(path: pathlib.Path, record: auth.KeyRecord) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        if out.tell() == 0:
            out.write(FILE_HEADER)
        out.write(record.to_line() + "\n")


def rewrite(path: pathlib.Path, records: Sequence[auth.KeyRecord]) -> None:
    """Replaces the store atomically (used by revoke)."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(FILE_HEADER)
            for record in records:
                out.write(record.to_line() + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def create_dev_key(keys_file: pathlib.Path) -> pathlib.Path:
    """A development key for tenant `dev` (every schema and event type) in a new store.

    The plaintext goes to `dev-api-key` (mode 0600) beside the store so that local clients find
    it; returns that path. Only for the local stack's default state directory.
    """
    plaintext, record = auth.new_key(DEV_TENANT, [auth.ANY], [auth.ANY], created=now_iso(),
                                     comment="development key, created by the service for the local stack")
    append(keys_file, record)
    key_path = keys_file.parent / DEV_KEY_FILE_NAME
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(plaintext + "\n")
    return key_path


def _user_path(raw: str, env: Mapping[str, str]) -> pathlib.Path:
    """A path the user typed: relative to where `bazel run` was called, not the runfiles."""
    path = pathlib.Path(raw)
    if not path.is_absolute() and env.get("BUILD_WORKING_DIRECTORY"):
        path = pathlib.Path(env["BUILD_WORKING_DIRECTORY"]) / path
    return path


def _split(values: Sequence[str]) -> list[str]:
    out = []
    for value in values:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    default_file = env.get("DP_INGEST_API_KEYS_FILE") or str(config.default_state_dir(env) / config.KEYS_FILE_NAME)
    p = argparse.ArgumentParser(prog="api_keys", description="Manage API keys of the ingestion service.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--file", default=default_file, help="key store [env DP_INGEST_API_KEYS_FILE]")
    commands = p.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key, print it once, store its hash",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add.add_argument("--tenant", required=True, help="tenant the key publishes for")
    add.add_argument("--schemas", action="append", default=None,
                     help="schema names the key may publish, comma-separated, or '*' (default: %s)"
                          % ", ".join(sorted(validation.contracts())))
    add.add_argument("--event-types", action="append", default=None,
                     help="event types the key may send (e.g. USER_EVENT_TYPE_CLICK), comma-separated; default '*'")
    add.add_argument("--comment", default="", help="free text stored with the key (who, what for)")
    commands.add_parser("list", help="show stored keys (ids, tenants, rights; never secrets)")
    revoke = commands.add_parser("revoke", help="remove a key from the store")
    revoke.add_argument("--key-id", required=True, help="the 12 hex digits after dpk_")
    return p


def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    env = os.environ if env is None else env
    args = parser(env).parse_args(argv)
    path = _user_path(args.file, env)
    if args.command == "add":
        accepted = validation.contracts()
        schemas = _split(args.schemas or sorted(accepted))
        event_types = _split(args.event_types or [auth.ANY])
        unknown = [s for s in schemas if s != auth.ANY and s not in accepted]
        if unknown:
            print("api_keys: the service does not accept %s; accepted: %s" % (", ".join(unknown), ", ".join(sorted(accepted))),
                  file=sys.stderr)
            return 2
        known_types = set(validation.EVENT_TYPE_NAMES.values()) - {"USER_EVENT_TYPE_UNSPECIFIED"}
        bad_types = [t for t in event_types if t != auth.ANY and t not in known_types]
        if bad_types:
            print("api_keys: unknown event type(s) %s; known: %s" % (", ".join(bad_types), ", ".join(sorted(known_types))),
                  file=sys.stderr)
            return 2
        if path.exists():
            load(path)  # refuse to append to a broken store
        try:
            plaintext, record = auth.new_key(args.tenant, schemas, event_types, created=now_iso(), comment=args.comment)
        except ValueError as err:
            print("api_keys: %s" % err, file=sys.stderr)
            return 2
        append(path, record)
        print("api_keys: added key %s for tenant %s (schemas: %s; event types: %s) to %s. The key is shown once:"
              % (record.key_id, record.tenant, ",".join(schemas), ",".join(event_types), path), file=sys.stderr)
        print(plaintext)
        return 0
    if not path.exists():
        print("api_keys: %s does not exist (add a key first)" % path, file=sys.stderr)
        return 2
    store = load(path)
    if args.command == "list":
        for record in store.records():
            print("key_id=%s tenant=%s schemas=%s event_types=%s created=%s comment=%r" % (
                record.key_id, record.tenant, ",".join(record.schemas), ",".join(record.event_types),
                record.created or "-", record.comment))
        return 0
    kept = [r for r in store.records() if r.key_id != args.key_id]
    if len(kept) == len(store):
        print("api_keys: no key %s in %s" % (args.key_id, path), file=sys.stderr)
        return 1
    rewrite(path, kept)
    print("api_keys: revoked %s in %s" % (args.key_id, path), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
