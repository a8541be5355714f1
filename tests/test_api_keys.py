"""API keys in the store, signed download URLs and the listen check, as functions (no Ray)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from auth.keys import KEY_PREFIX, KeyNameTaken, KeyNotFound, KeyStore, key_digest
from auth.signed_urls import EXPIRY_GRANULARITY_S, UrlSigner, derive_key
from jobs.ownership import Quotas
from jobs.store import Database
from serve_app.authentication import AuthRequired, bearer_token, check_listen, is_loopback
from tests.test_job_engine import Clock


def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path):
    keys = KeyStore(Database(tmp_path / "jobs.db"))
    key, secret = keys.create("team-a", quotas=Quotas(max_queued=5, jobs_per_hour=100))
    assert secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + 43  # 256 random bits
    assert key.id.startswith("key_") and key.shown == secret[:10] and not key.admin
    keys.db.execute("PRAGMA wal_checkpoint(FULL)")
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("jobs.db"))
    assert secret.encode() not in stored and key_digest(secret).encode() in stored
    assert stat.S_IMODE(os.stat(tmp_path / "jobs.db").st_mode) == 0o600

    found = keys.authenticate(key_digest(secret))
    assert found is not None and found.caller().key_id == key.id and found.quotas.max_queued == 5
    assert keys.authenticate(key_digest(secret + "x")) is None
    with pytest.raises(KeyNameTaken):
        keys.create("team-a")
    admin, _ = keys.create("ops", admin=True)
    assert [k.name for k in keys.list()] == ["team-a", "ops"] and keys.count() == 2
    assert keys.get(admin.id).caller().admin

    assert keys.revoke("team-a").revoked_at is not None
    assert keys.authenticate(key_digest(secret)) is None and keys.count() == 1 and keys.count(True) == 2
    with pytest.raises(KeyNotFound):
        keys.revoke("team-a")
    assert keys.quotas(key.id) == Quotas(max_queued=5, jobs_per_hour=100)  # its queued jobs keep their limits
    again, _ = keys.create("team-a")  # the name is free again once revoked
    assert again.id != key.id


def test_signed_urls_expire_and_name_one_file_only():
    clock = Clock(1_000_000.0)
    signer = UrlSigner(derive_key("whsec_secret", "file-urls"), ttl_s=3600, clock=clock)
    url = signer.sign("/files/fox.mp4")
    path, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    expires = int(params["expires"])
    assert path == "/files/fox.mp4" and expires % EXPIRY_GRANULARITY_S == 0
    assert 3600 <= expires - clock.now < 3600 + EXPIRY_GRANULARITY_S
    assert signer.valid("/files/fox.mp4", params["expires"], params["signature"])
    assert not signer.valid("/files/cat.mp4", params["expires"], params["signature"])  # another file
    assert not signer.valid("/files/fox.mp4", str(expires + 300), params["signature"])  # a longer life
    assert not signer.valid("/files/fox.mp4", params["expires"], None)
    other = UrlSigner(derive_key("whsec_other", "file-urls"), ttl_s=3600, clock=clock)
    assert not other.valid("/files/fox.mp4", params["expires"], params["signature"])  # another service
    clock.now = expires + 1
    assert not signer.valid("/files/fox.mp4", params["expires"], params["signature"])
    assert derive_key("s", "file-urls") != derive_key("s", "other")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("serve.internal", False)],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_the_service_refuses_to_listen_beyond_loopback_without_a_key():
    check_listen("127.0.0.1", 0)  # open on loopback: allowed
    check_listen("0.0.0.0", 1)
    with pytest.raises(AuthRequired, match="wan-serve keys create"):
        check_listen("0.0.0.0", 0)


def test_bearer_header_parsing():
    assert bearer_token("Bearer wsk_abc") == "wsk_abc"
    assert bearer_token("bearer  wsk_abc ") == "wsk_abc"
    assert bearer_token("Basic dXNlcjpwdw==") is None and bearer_token(None) is None and bearer_token("Bearer") is None


def test_keys_command_creates_lists_and_revokes(tmp_path):
    cli = [sys.executable, "-m", "serve_app.cli", "keys"]
    env = {**os.environ, "WAN_SERVE_DATA_DIR": str(tmp_path)}
    made = subprocess.run([*cli, "create", "--name", "team-a", "--max-queued", "3"], env=env,
                          capture_output=True, text=True, check=True)
    secret = made.stdout.strip()
    assert secret.startswith(KEY_PREFIX) and "not shown again" in made.stderr
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert "team-a" in listed and secret[:10] in listed and secret not in listed
    twice = subprocess.run([*cli, "create", "--name", "team-a"], env=env, capture_output=True, text=True)
    assert twice.returncode == 2 and "already named" in twice.stderr
    subprocess.run([*cli, "revoke", "team-a"], env=env, capture_output=True, text=True, check=True)
    keys = KeyStore(Database(tmp_path / "jobs.db"))
    assert keys.authenticate(key_digest(secret)) is None and keys.list(include_revoked=True)[0].revoked_at
