"""Versioned DDL for the analytics store, applied in order and recorded in `schema_migrations`.

`migrations/NNNN_lower_snake_name.sql` files hold ClickHouse statements separated by `;`. A run
applies the files that are not recorded yet, in version order, then records each with its
sha256 checksum. A recorded file whose checksum changed is refused: released migrations are
immutable, a change goes into a new file. ClickHouse DDL is not transactional, so every
statement is written to be re-runnable (`IF NOT EXISTS`) and a file is recorded only after all
its statements succeeded: a run that dies half-way re-applies that file next time.

No lock is taken: the analytics service is the only writer of its store (a chdb path cannot be
opened twice; against a server, run one service per database).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import re
import time
from typing import Mapping, Sequence

from services.analytics.store import Store

LOG = logging.getLogger("analytics.migrations")

MIGRATIONS_DIR = pathlib.Path(__file__).resolve().parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version UInt32,"
    " name String,"
    " checksum String,"
    " applied_at DateTime64(3, 'UTC') DEFAULT now64(3),"
    " duration_ms UInt32"
    ") ENGINE = MergeTree ORDER BY version"
)


class MigrationError(RuntimeError):
    """The store and the migration files disagree, or a statement failed."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return "%04d_%s" % (self.version, self.name)

    def statements(self) -> list:
        return split_statements(self.sql)


def checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def split_statements(sql: str) -> list:
    """Statements of a file: split on `;` outside quotes and `--` comments; comments dropped."""
    statements, current = [], []
    quote = None
    i = 0
    while i < len(sql):
        char = sql[i]
        if quote:
            current.append(char)
            if char == "\\" and i + 1 < len(sql):
                current.append(sql[i + 1])
                i += 2
                continue
            if char == quote:
                if i + 1 < len(sql) and sql[i + 1] == quote:  # '' inside a literal
                    current.append(sql[i + 1])
                    i += 2
                    continue
                quote = None
        elif char in ("'", '"', "`"):
            quote = char
            current.append(char)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end == -1 else end
            continue
        elif char == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    if quote:
        raise MigrationError("unterminated %s quote in migration SQL" % quote)
    statements.append("".join(current).strip())
    return [statement for statement in statements if statement]


def discover(directory: pathlib.Path = MIGRATIONS_DIR) -> list:
    """The migrations in `directory` by version; fails on stray names and duplicate versions."""
    found = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError("%s is not a migration file name: want NNNN_lower_snake_name.sql" % path.name)
        version = int(match.group(1))
        if version in found:
            raise MigrationError("two migrations share version %04d: %s and %s"
                                 % (version, found[version].label, path.name))
        data = path.read_bytes()
        found[version] = Migration(version, match.group(2), data.decode("utf-8"), checksum(data))
    if not found:
        raise MigrationError("no migration files (NNNN_name.sql) in %s" % directory)
    return [found[version] for version in sorted(found)]


def applied_versions(store: Store) -> dict:
    """version -> (name, checksum) recorded in the store."""
    result = store.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return {int(version): (name, digest) for version, name, digest in result.rows}


def pending(migrations: Sequence[Migration], applied: Mapping[int, tuple]) -> list:
    """The migrations still to apply; fails when applied files changed, vanished or were skipped."""
    by_version = {migration.version: migration for migration in migrations}
    for version, (name, digest) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                "the store has migration %04d_%s applied but no such file exists: is this code older "
                "than the store?" % (version, name))
        if migration.checksum != digest:
            raise MigrationError(
                "migration %s was changed after it was applied (store %s, file %s): applied migrations "
                "are immutable; revert the edit and put the change in a new file"
                % (migration.label, digest, migration.checksum))
    todo = [migration for migration in migrations if migration.version not in applied]
    if applied and todo and todo[0].version < max(applied):
        raise MigrationError("migration %s is older than the newest applied one (%04d): give it a higher version"
                             % (todo[0].label, max(applied)))
    return todo


def migrate(store: Store, directory: pathlib.Path = MIGRATIONS_DIR) -> tuple:
    """Applies the pending migrations; returns the labels applied by this run."""
    migrations = discover(directory)
    store.command(CREATE_MIGRATIONS_TABLE)
    todo = pending(migrations, applied_versions(store))
    done = []
    for migration in todo:
        started = time.monotonic()
        for statement in migration.statements():
            try:
                store.command(statement)
            except Exception as err:
                raise MigrationError("migration %s failed (nothing recorded; fix and rerun): %s"
                                     % (migration.label, err)) from err
        duration_ms = int((time.monotonic() - started) * 1000)
        store.insert_rows(MIGRATIONS_TABLE, ("version", "name", "checksum", "duration_ms"),
                          [(migration.version, migration.name, migration.checksum, duration_ms)])
        done.append(migration.label)
        LOG.info("event=migration_applied version=%s ms=%d backend=%s", migration.label, duration_ms, store.backend)
    LOG.info("event=migrations_done applied=%d total=%d backend=%s", len(done), len(migrations), store.backend)
    return tuple(done)
