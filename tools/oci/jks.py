"""A Java trust store (JKS format) written from PEM certificates, the same bytes for the same input.

Debian's ca-certificates-java makes /etc/ssl/certs/java/cacerts by running Java in a maintainer
script; the image bases run no maintainer scripts (rootfs.py), so this writes that file itself.
JKS, not PKCS12: a PKCS12 store carries random salts, JKS has none, and Java 17 reads a JKS
cacerts through its default keystore type (`keystore.type.compat`).

The layout, as OpenJDK's sun.security.provider.JavaKeyStore reads it (all integers big-endian):

    u4 magic 0xFEEDFEED, u4 version 2, u4 entry count, then per trusted-certificate entry:
        u4 tag 2, alias (Java modified UTF-8, u2 length first), u8 creation time (ms),
        certificate type "X.509" (same string encoding), u4 length, the DER certificate
    20 bytes SHA-1 over: the password's UTF-16BE code units, b"Mighty Aphrodite", all of the above

Entries are sorted by alias and carry a fixed creation time; aliases are lower case, as Java's
JKS store looks them up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from typing import Iterable, List, Tuple

MAGIC = 0xFEEDFEED
VERSION = 2
TRUSTED_CERT_TAG = 2
CERT_TYPE = "X.509"
WHITENER = b"Mighty Aphrodite"
# The password every JDK and Debian's ca-certificates-java use for cacerts; it only keys the
# integrity hash (a trust store holds nothing secret).
DEFAULT_PASSWORD = "changeit"
# Creation time of every entry: the epoch, like the file times in the image tars.
FIXED_TIME_MS = 0

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)


def pem_certificates(data: bytes, name: str = "input") -> List[bytes]:
    """The DER bytes of every certificate block in a PEM file, in file order."""
    ders = []
    for block in _PEM.findall(data):
        try:
            der = base64.b64decode(b"".join(block.split()), validate=True)
        except binascii.Error as err:
            raise ValueError("%s: a certificate block is not valid base64 (%s)" % (name, err)) from None
        if not der.startswith(b"\x30"):
            raise ValueError("%s: a certificate block does not hold a DER SEQUENCE" % name)
        ders.append(der)
    if not ders:
        raise ValueError("%s: no PEM certificate (-----BEGIN CERTIFICATE-----) in it" % name)
    return ders


def java_utf(text: str) -> bytes:
    """`DataOutputStream.writeUTF`: u2 byte length, then modified UTF-8 of the UTF-16 code units
    (NUL as two bytes, characters beyond the BMP as two three-byte surrogates)."""
    utf16 = text.encode("utf-16-be", "surrogatepass")
    units = struct.unpack(">%dH" % (len(utf16) // 2), utf16)
    out = bytearray()
    for unit in units:
        if 0x0001 <= unit <= 0x007F:
            out.append(unit)
        elif unit <= 0x07FF:
            out += bytes((0xC0 | (unit >> 6), 0x80 | (unit & 0x3F)))
        else:
            out += bytes((0xE0 | (unit >> 12), 0x80 | ((unit >> 6) & 0x3F), 0x80 | (unit & 0x3F)))
    if len(out) > 0xFFFF:
        raise ValueError("string of %d encoded bytes does not fit a JKS string (max 65535)" % len(out))
    return struct.pack(">H", len(out)) + bytes(out)


def pre_keyed_hash(password: str):
    """SHA-1 started with the password (UTF-16BE code units) and the format's whitener."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(password.encode("utf-16-be", "surrogatepass"))
    digest.update(WHITENER)
    return digest


def trust_store(certificates: Iterable[Tuple[str, bytes]], password: str = DEFAULT_PASSWORD,
                created_ms: int = FIXED_TIME_MS) -> bytes:
    """A JKS store with one trusted-certificate entry per (alias, DER certificate).

    Aliases are lowered (Java's JKS finds entries by the lower-case alias) and must then be
    unique; entries are written sorted by alias, so the input order does not matter.
    """
    by_alias = {}
    for alias, der in certificates:
        key = alias.lower()
        if not key:
            raise ValueError("empty alias")
        if key in by_alias:
            raise ValueError("alias %r given twice (aliases are compared in lower case)" % key)
        by_alias[key] = bytes(der)
    body = bytearray(struct.pack(">III", MAGIC, VERSION, len(by_alias)))
    for alias in sorted(by_alias):
        der = by_alias[alias]
        body += struct.pack(">I", TRUSTED_CERT_TAG) + java_utf(alias) + struct.pack(">q", created_ms)
        body += java_utf(CERT_TYPE) + struct.pack(">I", len(der)) + der
    digest = pre_keyed_hash(password)
    digest.update(body)
    return bytes(body) + digest.digest()


def debian_alias(file_name: str) -> str:
    """The alias Debian's ca-certificates-java gives a CA file: `debian:<name>.pem`, lower case
    (usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt -> debian:isrg_root_x1.pem)."""
    base = file_name.rsplit("/", 1)[-1]
    if base.endswith(".crt"):
        base = base[: -len(".crt")] + ".pem"
    return ("debian:" + base).lower()


def ca_trust_store(files: Iterable[Tuple[str, bytes]], password: str = DEFAULT_PASSWORD) -> bytes:
    """The trust store of CA files [(path, PEM bytes)]: one entry per certificate, aliased after
    its file (a second certificate in the same file gets `#2`, and so on)."""
    entries = []
    for path, data in files:
        alias = debian_alias(path)
        for number, der in enumerate(pem_certificates(data, path), start=1):
            entries.append((alias if number == 1 else "%s#%d" % (alias, number), der))
    return trust_store(entries, password)
