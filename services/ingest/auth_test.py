"""API key format, hashing, store parsing, authentication decisions, and the api_keys CLI."""

import json
import stat

import pytest

from services.ingest import api_keys, auth

SCHEMA = "datapipelines.behaviour.v1.UserEvent"


def store_with(*records):
    return auth.KeyStore(records)


def test_new_key_is_random_and_stored_only_as_a_salted_hash():
    plaintext, record = auth.new_key("t1", [SCHEMA])
    other_plaintext, other = auth.new_key("t1", [SCHEMA])
    assert plaintext != other_plaintext and record.salt != other.salt
    assert plaintext.startswith("dpk_%s_" % record.key_id)
    secret = plaintext.split("_", 2)[2]
    line = record.to_line()
    assert secret not in line and plaintext not in line
    assert record.hash == auth.hash_secret(secret, bytes.fromhex(record.salt))
    # The same secret under another salt hashes differently.
    assert auth.hash_secret(secret, b"\x00" * 16) != record.hash


def test_verify_accepts_the_key_and_nothing_close_to_it():
    plaintext, record = auth.new_key("t1", [SCHEMA], ["USER_EVENT_TYPE_CLICK"])
    store = store_with(record)
    principal = store.verify(plaintext)
    assert principal.tenant == "t1" and principal.key_id == record.key_id
    assert principal.may_publish(SCHEMA) and not principal.may_publish("x.Y")
    assert principal.may_send("USER_EVENT_TYPE_CLICK") and not principal.may_send("USER_EVENT_TYPE_PAGE_VIEW")
    flipped = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    for wrong in (flipped, "dpk_%s_%s" % ("0" * 12, plaintext.split("_", 2)[2]), "nonsense", ""):
        with pytest.raises(auth.AuthError):
            store.verify(wrong)


def test_wildcards():
    plaintext, record = auth.new_key("t1", [auth.ANY])
    principal = store_with(record).verify(plaintext)
    assert principal.may_publish("anything.v1.At") and principal.may_send("USER_EVENT_TYPE_PURCHASE")


def test_metadata_forms():
    plaintext, record = auth.new_key("t1", [SCHEMA])
    store = store_with(record)
    assert store.authenticate([("x-api-key", plaintext)]).tenant == "t1"
    assert store.authenticate([("authorization", "Bearer " + plaintext)]).tenant == "t1"
    assert store.authenticate([("authorization", "bearer  " + plaintext), ("x-api-key", plaintext)]).tenant == "t1"
    with pytest.raises(auth.AuthError, match="no API key"):
        store.authenticate([("user-agent", "x")])
    with pytest.raises(auth.AuthError, match="Bearer"):
        store.authenticate([("authorization", "Basic dXNlcjpwdw==")])
    other, _ = auth.new_key("t2", [SCHEMA])
    with pytest.raises(auth.AuthError, match="more than one"):
        store.authenticate([("x-api-key", plaintext), ("authorization", "Bearer " + other)])


def test_tenant_names_are_checked():
    for bad in ("", "-x", "a b", "x" * 65, "tenant/1"):
        with pytest.raises(ValueError):
            auth.new_key(bad, [SCHEMA])


def test_store_parsing_reports_the_line():
    _, record = auth.new_key("t1", [SCHEMA])
    text = "# comment\n\n" + record.to_line() + "\n{not json\n"
    with pytest.raises(auth.KeyStoreError, match="line 4"):
        auth.KeyStore.parse(text, "keys.jsonl")
    assert len(auth.KeyStore.parse("# only comments\n" + record.to_line())) == 1
    plain = json.loads(record.to_line())
    plain["secret"] = "oops"
    with pytest.raises(auth.KeyStoreError, match="plaintext"):
        auth.KeyStore.parse(json.dumps(plain))
    with pytest.raises(auth.KeyStoreError, match="twice"):
        auth.KeyStore.parse(record.to_line() + "\n" + record.to_line())


def test_cli_add_prints_the_key_once_and_stores_its_hash(tmp_path, capsys):
    keys = tmp_path / "state" / "keys.jsonl"
    assert api_keys.main(["--file", str(keys), "add", "--tenant", "shop-1", "--schemas", SCHEMA,
                          "--event-types", "USER_EVENT_TYPE_CLICK,USER_EVENT_TYPE_PAGE_VIEW", "--comment", "test"],
                         env={}) == 0
    plaintext = capsys.readouterr().out.strip()
    assert plaintext.startswith("dpk_")
    text = keys.read_text()
    assert plaintext not in text and plaintext.split("_", 2)[2] not in text
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    principal = api_keys.load(keys).verify(plaintext)
    assert principal.tenant == "shop-1" and principal.event_types == {"USER_EVENT_TYPE_CLICK", "USER_EVENT_TYPE_PAGE_VIEW"}

    assert api_keys.main(["--file", str(keys), "add", "--tenant", "shop-2"], env={}) == 0
    second = capsys.readouterr().out.strip()
    assert api_keys.load(keys).verify(second).schemas == {SCHEMA}
    assert api_keys.main(["--file", str(keys), "list"], env={}) == 0
    listing = capsys.readouterr().out
    assert "tenant=shop-1" in listing and "tenant=shop-2" in listing and "dpk_" not in listing

    key_id = principal.key_id
    assert api_keys.main(["--file", str(keys), "revoke", "--key-id", key_id], env={}) == 0
    with pytest.raises(auth.AuthError):
        api_keys.load(keys).verify(plaintext)
    assert api_keys.load(keys).verify(second).tenant == "shop-2"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_cli_refuses_unknown_schemas_and_types(tmp_path, capsys):
    keys = tmp_path / "keys.jsonl"
    assert api_keys.main(["--file", str(keys), "add", "--tenant", "t", "--schemas", "x.v1.Nope"], env={}) == 2
    assert api_keys.main(["--file", str(keys), "add", "--tenant", "t", "--event-types", "CLICK"], env={}) == 2
    assert not keys.exists()


def test_cli_default_file_is_in_the_workspace_state_dir(tmp_path, capsys):
    env = {"BUILD_WORKSPACE_DIRECTORY": str(tmp_path)}
    assert api_keys.main(["add", "--tenant", "t"], env=env) == 0
    assert (tmp_path / ".state" / "ingest" / "api_keys.jsonl").is_file()


def test_dev_key(tmp_path):
    keys = tmp_path / "ingest" / "api_keys.jsonl"
    key_file = api_keys.create_dev_key(keys)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    plaintext = key_file.read_text().strip()
    assert plaintext not in keys.read_text()
    assert api_keys.load(keys).verify(plaintext).tenant == api_keys.DEV_TENANT
