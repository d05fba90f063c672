"""Versioned SQL migrations for the Data Pipelines PostgreSQL database.

    bazel run //deploy/postgres:migrate -- --help

`migrations/NNNN_name.sql` files are applied in version order, each in its own transaction
together with its row in `schema_migrations` (version, name, sha256 checksum, time). A run
applies only what is missing, so running it again changes nothing. A file that was applied and
then edited is refused (its checksum no longer matches): released migrations are immutable,
changes go into a new file. Runs are serialised by an advisory lock, so two runners against
one database cannot apply the same file twice.

After the files, the runner sets the passwords of the login roles the migrations create
(`dp_app`, `dp_cdc`) from its configuration: passwords never live in SQL files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import sys
import time
from typing import Mapping, Optional, Sequence

import psycopg
from psycopg import sql

LOG = logging.getLogger("postgres_migrate")

MIGRATIONS_DIR = pathlib.Path(__file__).resolve().parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_lock key: "dpmigrat" as a 64-bit integer; any constant works, one per runner kind.
ADVISORY_LOCK_KEY = int.from_bytes(b"dpmigrat", "big") & 0x7FFFFFFFFFFFFFFF

# Login roles made by the migrations; their passwords come from flags/environment.
APP_ROLE = "dp_app"
CDC_ROLE = "dp_cdc"
# Documented defaults for the local stack on loopback only; set real ones through the
# environment anywhere else.
DEFAULT_APP_PASSWORD = "dp-app-local"
DEFAULT_CDC_PASSWORD = "dp-cdc-local"


class MigrationError(RuntimeError):
    """The database and the migration files disagree, or a file failed; nothing half-applied."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: pathlib.Path
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return "%04d_%s" % (self.version, self.name)


@dataclasses.dataclass(frozen=True)
class MigrationReport:
    applied: tuple  # labels applied by this run, in order
    already_applied: int
    seconds: float


def checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def discover(directory: pathlib.Path = MIGRATIONS_DIR) -> list:
    """The migration files in `directory`, by version; fails on stray names and duplicates."""
    migrations = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(
                "%s is not a migration file name: want NNNN_lower_snake_name.sql" % path
            )
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(
                "two migrations share version %04d: %s and %s" % (version, migrations[version].path.name, path.name)
            )
        data = path.read_bytes()
        migrations[version] = Migration(version, match.group(2), path, data.decode("utf-8"), checksum(data))
    if not migrations:
        raise MigrationError("no migration files (NNNN_name.sql) in %s" % directory)
    return [migrations[version] for version in sorted(migrations)]


def _ensure_table(conn: psycopg.Connection) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(),"
            " duration_ms integer NOT NULL)"
        ).format(sql.Identifier(MIGRATIONS_TABLE))
    )


def applied_versions(conn: psycopg.Connection) -> dict:
    """version -> (name, checksum) of every migration recorded in the database."""
    rows = conn.execute(
        sql.SQL("SELECT version, name, checksum FROM {} ORDER BY version").format(sql.Identifier(MIGRATIONS_TABLE))
    ).fetchall()
    return {version: (name, digest) for version, name, digest in rows}


def check_history(migrations: Sequence[Migration], applied: Mapping[int, tuple]) -> list:
    """The migrations still to apply; fails if applied files changed, vanished or were skipped."""
    by_version = {migration.version: migration for migration in migrations}
    for version, (name, digest) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                "the database has migration %04d_%s applied, but no such file exists: is this code "
                "older than the database?" % (version, name)
            )
        if migration.checksum != digest:
            raise MigrationError(
                "migration %s was changed after it was applied (database %s, file %s): applied "
                "migrations are immutable; revert the edit and put the change in a new file"
                % (migration.label, digest, migration.checksum)
            )
    pending = [migration for migration in migrations if migration.version not in applied]
    if applied and pending and pending[0].version < max(applied):
        raise MigrationError(
            "migration %s is older than the newest applied one (%04d): give it a higher version"
            % (pending[0].label, max(applied))
        )
    return pending


def set_role_passwords(conn: psycopg.Connection, passwords: Mapping[str, str]) -> None:
    """ALTER ROLE ... PASSWORD for each role (the server stores a SCRAM verifier, not the text)."""
    for role, password in passwords.items():
        if not password:
            raise MigrationError("empty password for role %s: set it through flags or environment" % role)
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )


def migrate(
    dsn: str,
    passwords: Optional[Mapping[str, str]] = None,
    directory: pathlib.Path = MIGRATIONS_DIR,
) -> MigrationReport:
    """Applies every pending migration in `directory` to the database at `dsn` (a superuser)."""
    began = time.monotonic()
    migrations = discover(directory)
    applied_now = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            _ensure_table(conn)
            applied = applied_versions(conn)
            pending = check_history(migrations, applied)
            for migration in pending:
                started = time.monotonic()
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(
                            sql.SQL("INSERT INTO {} (version, name, checksum, duration_ms) VALUES (%s, %s, %s, %s)")
                            .format(sql.Identifier(MIGRATIONS_TABLE)),
                            (migration.version, migration.name, migration.checksum,
                             int((time.monotonic() - started) * 1000)),
                        )
                except psycopg.Error as err:
                    raise MigrationError(
                        "migration %s failed and was rolled back: %s" % (migration.label, str(err).strip())
                    ) from err
                applied_now.append(migration.label)
                LOG.info("event=migration_applied version=%s ms=%d", migration.label,
                         (time.monotonic() - started) * 1000)
            if passwords:
                set_role_passwords(conn, passwords)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    report = MigrationReport(tuple(applied_now), len(migrations) - len(applied_now), time.monotonic() - began)
    LOG.info("event=migrations_done applied=%d already_applied=%d seconds=%.2f",
             len(report.applied), report.already_applied, report.seconds)
    return report


def default_passwords() -> dict:
    """Role passwords from DP_POSTGRES_APP_PASSWORD / DP_POSTGRES_CDC_PASSWORD, else local defaults."""
    return {
        APP_ROLE: os.environ.get("DP_POSTGRES_APP_PASSWORD") or DEFAULT_APP_PASSWORD,
        CDC_ROLE: os.environ.get("DP_POSTGRES_CDC_PASSWORD") or DEFAULT_CDC_PASSWORD,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    passwords = default_passwords()
    parser = argparse.ArgumentParser(
        prog="migrate",
        description="Apply the pending SQL migrations of deploy/postgres/migrations to a PostgreSQL database.",
        epilog="Example (the local server's superuser, over its Unix socket): bazel run //deploy/postgres:migrate "
               "-- --dsn \"host=$PWD/.state/postgres/run port=5432 dbname=datapipelines user=postgres\"",
    )
    parser.add_argument("--dsn", default=os.environ.get("DP_POSTGRES_DSN"),
                        help="libpq connection string of a superuser (or the database owner with "
                             "CREATEROLE) [env DP_POSTGRES_DSN, required]")
    parser.add_argument("--app-password", default=passwords[APP_ROLE],
                        help="password set for role %s [env DP_POSTGRES_APP_PASSWORD, default %s: local stack only]"
                             % (APP_ROLE, DEFAULT_APP_PASSWORD))
    parser.add_argument("--cdc-password", default=passwords[CDC_ROLE],
                        help="password set for role %s [env DP_POSTGRES_CDC_PASSWORD, default %s: local stack only]"
                             % (CDC_ROLE, DEFAULT_CDC_PASSWORD))
    parser.add_argument("--list", action="store_true", help="print applied and pending migrations, change nothing")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no database: pass --dsn or set DP_POSTGRES_DSN (start one: bazel run //deploy/postgres:server)")
    try:
        if args.list:
            migrations = discover()
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                recorded = conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()[0]
                applied = applied_versions(conn) if recorded else {}
            for migration in migrations:
                print("%s %s" % ("applied" if migration.version in applied else "pending", migration.label))
            return 0
        report = migrate(args.dsn, {APP_ROLE: args.app_password, CDC_ROLE: args.cdc_password})
    except (MigrationError, psycopg.Error) as err:
        print("migrations failed: %s" % err, file=sys.stderr)
        return 1
    print("migrations: applied %d (%s), %d already applied, %.2f s"
          % (len(report.applied), ", ".join(report.applied) or "none", report.already_applied, report.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
