"""The JKS trust store writer: the bytes read back per the format, determinism, and Java's keytool."""

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess

import pytest

import jks


def _pem(der: bytes) -> bytes:
    text = base64.encodebytes(der).decode().replace("\n", "")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return ("-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n" % "\n".join(lines)).encode()


def _read_utf(data: bytes, at: int):
    (length,) = struct.unpack_from(">H", data, at)
    raw = data[at + 2:at + 2 + length]
    # modified UTF-8 is CESU-8 with NUL as C0 80: undo that, then join the surrogate pairs
    text = raw.replace(b"\xc0\x80", b"\x00").decode("utf-8", "surrogatepass")
    text = text.encode("utf-16-be", "surrogatepass").decode("utf-16-be")
    return text, at + 2 + length


def _parse(data: bytes, password: str = "changeit"):
    """[(tag, alias, created_ms, cert_type, der)] read field by field, the integrity hash checked."""
    body, stored = data[:-20], data[-20:]
    expected = hashlib.sha1(password.encode("utf-16-be") + b"Mighty Aphrodite" + body).digest()
    assert stored == expected, "integrity hash does not match"
    magic, version, count = struct.unpack_from(">III", body, 0)
    assert (magic, version) == (0xFEEDFEED, 2)
    at, entries = 12, []
    for _ in range(count):
        (tag,) = struct.unpack_from(">I", body, at)
        alias, at = _read_utf(body, at + 4)
        (created,) = struct.unpack_from(">q", body, at)
        cert_type, at = _read_utf(body, at + 8)
        (length,) = struct.unpack_from(">I", body, at)
        entries.append((tag, alias, created, cert_type, body[at + 4:at + 4 + length]))
        at += 4 + length
    assert at == len(body), "bytes left after the last entry"
    return entries


# Not real certificates (the writer does not interpret them), but DER SEQUENCEs as PEM requires.
DER_A = b"\x30\x03\x02\x01\x01"
DER_B = b"\x30\x03\x02\x01\x02"
DER_C = b"\x30\x04\x02\x02\x01\x03"


def test_entries_read_back_sorted_with_fixed_time_and_the_format_hash():
    data = jks.trust_store([("Zeta", DER_A), ("alpha", DER_B)])
    assert _parse(data) == [(2, "alpha", 0, "X.509", DER_B), (2, "zeta", 0, "X.509", DER_A)]
    with pytest.raises(AssertionError, match="integrity hash"):
        _parse(data, password="changeme")


def test_same_certificates_in_any_order_give_the_same_bytes():
    files = [("usr/share/ca-certificates/mozilla/B_Root.crt", _pem(DER_B)),
             ("usr/share/ca-certificates/mozilla/A_Root.crt", _pem(DER_A) + _pem(DER_C))]
    first = jks.ca_trust_store(files)
    assert jks.ca_trust_store(list(reversed(files))) == first
    assert [(alias, der) for _, alias, _, _, der in _parse(first)] == [
        ("debian:a_root.pem", DER_A), ("debian:a_root.pem#2", DER_C), ("debian:b_root.pem", DER_B)]
    assert jks.ca_trust_store(files[:1]) != first
    assert jks.trust_store([("a", DER_A)], password="another") != jks.trust_store([("a", DER_A)])


def test_aliases_use_java_modified_utf8():
    assert jks.java_utf("ab") == b"\x00\x02ab"
    assert jks.java_utf("\x00") == b"\x00\x02\xc0\x80"
    assert jks.java_utf("ő") == b"\x00\x02\xc5\x91"
    assert jks.java_utf("\U0001F512") == b"\x00\x06\xed\xa0\xbd\xed\xb4\x92"  # two 3-byte surrogates
    name = "debian:netlock_arany_=class_gold=_főtanúsítvány.pem"
    assert _parse(jks.trust_store([(name, DER_A)]))[0][1] == name
    with pytest.raises(ValueError, match="65535"):
        jks.java_utf("x" * 70000)


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="given twice"):
        jks.trust_store([("Root", DER_A), ("root", DER_B)])
    with pytest.raises(ValueError, match="x.crt: no PEM certificate"):
        jks.ca_trust_store([("x.crt", b"not a certificate\n")])
    with pytest.raises(ValueError, match="y.crt: a certificate block is not valid base64"):
        jks.ca_trust_store([("y.crt", b"-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n")])


def _keytool():
    found = shutil.which("keytool")
    if not found and os.environ.get("JAVA_HOME"):
        candidate = os.path.join(os.environ["JAVA_HOME"], "bin", "keytool")
        found = candidate if os.access(candidate, os.X_OK) else None
    return found


KEYTOOL = _keytool()
# keytool prints aliases in the platform encoding: UTF-8 for the non-ASCII alias below.
KEYTOOL_ENV = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")


def _run_keytool(*args):
    # a fixed locale and zone, so the entries' dates print as "Jan 1, 1970"
    fixed = ["-J-Duser.language=en", "-J-Duser.country=US", "-J-Duser.timezone=UTC"]
    return subprocess.run([KEYTOOL, *args, *fixed], env=KEYTOOL_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, encoding="utf-8", timeout=120)


@pytest.fixture(scope="module")
def real_certificates(tmp_path_factory):
    """Three self-signed CA certificates made by keytool, as {file name: PEM}."""
    work = tmp_path_factory.mktemp("certs")
    store = str(work / "ca.p12")
    for name in ("ca-one", "ca-two", "ca-three"):
        made = _run_keytool("-genkeypair", "-keystore", store, "-storepass", "secret-1", "-storetype", "PKCS12",
                            "-alias", name, "-keyalg", "EC", "-groupname", "secp256r1", "-validity", "3650",
                            "-dname", "CN=%s, O=Data Pipelines test" % name, "-ext", "bc:c")
        assert made.returncode == 0, made.stdout
    listed = _run_keytool("-list", "-rfc", "-keystore", store, "-storepass", "secret-1")
    assert listed.returncode == 0, listed.stdout
    pems = dict(re.findall(r"Alias name: (\S+).*?(-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----)",
                           listed.stdout, re.S))
    assert sorted(pems) == ["ca-one", "ca-three", "ca-two"], listed.stdout
    return {
        "mozilla/CA_One.crt": (pems["ca-one"] + "\n").encode(),
        "mozilla/Fő_Tanúsítvány.crt": (pems["ca-two"] + "\n").encode(),
        "mozilla/Two_In_One.crt": (pems["ca-three"] + "\n" + pems["ca-one"] + "\n").encode(),
    }


@pytest.mark.skipif(KEYTOOL is None, reason="no Java keytool on PATH or in $JAVA_HOME/bin (install a JDK/JRE 17)")
def test_java_keytool_reads_every_certificate(real_certificates, tmp_path):
    files = sorted(real_certificates.items())
    path = tmp_path / "cacerts"
    path.write_bytes(jks.ca_trust_store(files))
    listed = _run_keytool("-list", "-keystore", str(path), "-storepass", "changeit")
    assert listed.returncode == 0, listed.stdout
    assert "Keystore type: JKS" in listed.stdout
    assert "Your keystore contains 4 entries" in listed.stdout, listed.stdout
    found = dict(re.findall(r"^(\S.*?), Jan 1, 1970, trustedCertEntry,\s*\nCertificate fingerprint \(SHA-256\): (\S+)",
                            listed.stdout, re.M))
    want = {}
    for name, pem in files:
        for number, der in enumerate(jks.pem_certificates(pem), start=1):
            alias = jks.debian_alias(name) + ("" if number == 1 else "#%d" % number)
            want[alias] = ":".join("%02X" % b for b in hashlib.sha256(der).digest())
    assert found == want
    assert "debian:fő_tanúsítvány.pem" in found
    wrong = _run_keytool("-list", "-keystore", str(path), "-storepass", "not-changeit")
    assert wrong.returncode != 0 and "password was incorrect" in wrong.stdout, wrong.stdout
