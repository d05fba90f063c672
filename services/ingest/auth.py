"""API keys: format, hashing, the key store file and the decisions made from them (pure; no I/O).

A key looks like `dpk_<key id>_<secret>`: the key id (12 hex digits) finds the stored record
without trying every hash, the secret (32 random bytes, URL-safe base64) is what proves
possession. The store keeps, per key, the tenant, what it may publish, a random salt and
SHA-256(domain || salt || secret); never the secret. Keys are 256-bit random strings, not
passwords, so a slow KDF would add no protection and would make every failed attempt an easy
CPU denial of service (docs/adr/0008-ingestion-service.md).

The store is a JSON-lines file: one key per line, `#` comments and blank lines ignored, so the
CLI appends without rewriting and a bad line is reported by number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
from typing import Iterable, Optional, Sequence

KEY_PREFIX = "dpk"
ALGORITHM = "sha256-salted-v1"
_DOMAIN = b"datapipelines.ingest.api-key.v1\x00"
ANY = "*"
_KEY_RE = re.compile(r"^dpk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"


class AuthError(Exception):
    """The caller could not be authenticated (gRPC UNAUTHENTICATED); the message says why."""


class KeyStoreError(ValueError):
    """The key store file is not valid; the message names the line."""


def valid_tenant(tenant: str) -> bool:
    return bool(_TENANT_RE.match(tenant))


def hash_secret(secret: str, salt: bytes) -> str:
    return hashlib.sha256(_DOMAIN + salt + secret.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller: its tenant and what it may publish."""

    tenant: str
    key_id: str
    schemas: frozenset  # full message names, or {"*"}
    event_types: frozenset  # enum value names such as USER_EVENT_TYPE_CLICK, or {"*"}

    def may_publish(self, schema_name: str) -> bool:
        return ANY in self.schemas or schema_name in self.schemas

    def may_send(self, event_type: str) -> bool:
        return ANY in self.event_types or event_type in self.event_types


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """One line of the key store."""

    key_id: str
    tenant: str
    schemas: tuple
    event_types: tuple
    salt: str  # hex
    hash: str  # hex SHA-256
    created: str = ""
    comment: str = ""

    def principal(self) -> Principal:
        return Principal(self.tenant, self.key_id, frozenset(self.schemas), frozenset(self.event_types))

    def to_line(self) -> str:
        return json.dumps({
            "key_id": self.key_id,
            "tenant": self.tenant,
            "schemas": list(self.schemas),
            "event_types": list(self.event_types),
            "algorithm": ALGORITHM,
            "salt": self.salt,
            "hash": self.hash,
            "created": self.created,
            "comment": self.comment,
        }, sort_keys=True)


def new_key(tenant: str, schemas: Sequence[str], event_types: Sequence[str] = (ANY,), created: str = "",
            comment: str = "") -> tuple[str, KeyRecord]:
    """A fresh key: (the plaintext to hand out once, the record to store)."""
    if not valid_tenant(tenant):
        raise ValueError("tenant %r: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit" % tenant)
    if not schemas:
        raise ValueError("a key needs at least one schema (or '*')")
    if not event_types:
        raise ValueError("a key needs at least one event type (or '*')")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = KeyRecord(key_id, tenant, tuple(schemas), tuple(event_types), salt.hex(), hash_secret(secret, salt),
                       created, comment)
    return "%s_%s_%s" % (KEY_PREFIX, key_id, secret), record


def parse_record(line: str, where: str) -> KeyRecord:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise KeyStoreError("%s: not JSON (%s)" % (where, err.msg)) from None
    if not isinstance(data, dict):
        raise KeyStoreError("%s: expected a JSON object" % where)
    if data.get("algorithm") != ALGORITHM:
        raise KeyStoreError("%s: algorithm %r is not %r" % (where, data.get("algorithm"), ALGORITHM))
    if "secret" in data or "key" in data:
        raise KeyStoreError("%s: holds a plaintext key; store only hashes (use the api_keys CLI)" % where)
    try:
        record = KeyRecord(
            key_id=str(data["key_id"]),
            tenant=str(data["tenant"]),
            schemas=tuple(str(s) for s in data["schemas"]),
            event_types=tuple(str(t) for t in data.get("event_types", [ANY])),
            salt=str(data["salt"]),
            hash=str(data["hash"]),
            created=str(data.get("created", "")),
            comment=str(data.get("comment", "")),
        )
    except (KeyError, TypeError) as err:
        raise KeyStoreError("%s: missing or malformed field %s" % (where, err)) from None
    if not re.fullmatch(r"[0-9a-f]{12}", record.key_id):
        raise KeyStoreError("%s: key_id %r is not 12 hex digits" % (where, record.key_id))
    if not valid_tenant(record.tenant):
        raise KeyStoreError("%s: tenant %r is not a valid tenant id" % (where, record.tenant))
    try:
        bytes.fromhex(record.salt)
        if len(bytes.fromhex(record.hash)) != 32:
            raise ValueError
    except ValueError:
        raise KeyStoreError("%s: salt/hash are not hex (hash: 64 digits)" % where) from None
    return record


class KeyStore:
    """The keys the service accepts, by key id."""

    def __init__(self, records: Iterable[KeyRecord] = ()):
        self._by_id: dict[str, KeyRecord] = {}
        for record in records:
            if record.key_id in self._by_id:
                raise KeyStoreError("key id %s appears twice" % record.key_id)
            self._by_id[record.key_id] = record

    @classmethod
    def parse(cls, text: str, source: str = "key store") -> "KeyStore":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            records.append(parse_record(line, "%s line %d" % (source, number)))
        return cls(records)

    def __len__(self) -> int:
        return len(self._by_id)

    def records(self) -> list[KeyRecord]:
        return list(self._by_id.values())

    def tenants(self) -> set[str]:
        return {r.tenant for r in self._by_id.values()}

    def verify(self, key: str) -> Principal:
        """The principal of a presented key; AuthError when it is not one of ours."""
        match = _KEY_RE.match(key)
        if not match:
            raise AuthError("malformed API key (expected dpk_<id>_<secret>)")
        record = self._by_id.get(match.group(1))
        # Hash even for an unknown id so that timing does not tell which ids exist.
        salt = bytes.fromhex(record.salt) if record else b"\x00" * 16
        digest = hash_secret(match.group(2), salt)
        if record is None or not hmac.compare_digest(digest, record.hash):
            raise AuthError("unknown or revoked API key")
        return record.principal()

    def authenticate(self, metadata: Optional[Iterable[tuple[str, object]]]) -> Principal:
        """The principal from gRPC metadata: `x-api-key: <key>` or `authorization: Bearer <key>`."""
        return self.verify(presented_key(metadata))


def presented_key(metadata: Optional[Iterable[tuple[str, object]]]) -> str:
    """The API key a caller sent; AuthError when there is none or more than one."""
    found = []
    for name, value in metadata or ():
        name = name.lower()
        if isinstance(value, bytes):
            continue  # binary (-bin) metadata never carries a key
        if name == API_KEY_HEADER:
            found.append(str(value).strip())
        elif name == AUTHORIZATION_HEADER:
            scheme, _, token = str(value).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("authorization metadata must be 'Bearer <API key>'")
            found.append(token.strip())
    if not found:
        raise AuthError("no API key: send metadata 'x-api-key: <key>' or 'authorization: Bearer <key>'")
    if len(set(found)) > 1:
        raise AuthError("more than one different API key in the metadata")
    return found[0]

