"""KeyStore: keys stored hashed in a real SQLite file, verified, revoked, re-tiered, persisted."""

from __future__ import annotations

import hashlib
import sqlite3
import threading

import pytest

from gonka_mux.gateway import KeyNotFoundError, KeyStore, KeyStoreError


@pytest.fixture
def store(tmp_path):
    s = KeyStore(tmp_path / "keys.sqlite3")
    yield s
    s.close()


def test_create_returns_the_plaintext_once_and_stores_only_its_hash(store, tmp_path):
    record, plaintext = store.create(name="agent-1", tier="pro")
    assert plaintext.startswith(f"gmx_{record.id}_") and len(plaintext) > 50
    assert store.verify(plaintext) == record
    raw = (tmp_path / "keys.sqlite3").read_bytes()
    wal = tmp_path / "keys.sqlite3-wal"
    if wal.exists():
        raw += wal.read_bytes()
    # The secret is everything after "gmx_<id>_" (token_urlsafe may itself contain "_").
    secret = plaintext[len(f"gmx_{record.id}_") :]
    assert len(secret) >= 40 and secret.encode() not in raw
    stored = sqlite3.connect(tmp_path / "keys.sqlite3").execute("SELECT hash FROM api_keys")
    assert stored.fetchone()[0] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert secret not in repr(record) and secret not in str(record.to_dict())


def test_wrong_secret_unknown_id_and_garbage_are_rejected(store):
    _record, plaintext = store.create()
    other_secret = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    assert store.verify(other_secret) is None
    assert store.verify(f"gmx_{'0' * 12}_{plaintext.rsplit('_', 1)[1]}") is None
    for garbage in ("", "gmx_", "Bearer x", plaintext + "x" * 200, "gmx_zz_" + "a" * 40, None):
        assert store.verify(garbage) is None  # type: ignore[arg-type]


def test_revoke_and_set_tier_take_effect_at_once(store):
    record, plaintext = store.create(tier="free")
    assert store.verify(plaintext).tier == "free"  # now cached
    assert store.set_tier(record.id, "pro").tier == "pro"
    assert store.verify(plaintext).tier == "pro"
    revoked = store.revoke(record.id)
    assert not revoked.active and revoked.revoked_at is not None
    assert store.verify(plaintext) is None
    assert store.revoke(record.id).revoked_at == revoked.revoked_at  # idempotent
    assert [k.id for k in store.list(include_revoked=False)] == []
    assert [k.id for k in store.list()] == [record.id]


def test_unknown_ids_and_bad_input_raise_typed_errors(store):
    with pytest.raises(KeyNotFoundError):
        store.get("000000000000")
    with pytest.raises(KeyNotFoundError):
        store.set_tier("000000000000", "pro")
    with pytest.raises(KeyStoreError, match="tier"):
        store.create(tier="no spaces allowed")
    with pytest.raises(KeyStoreError, match="name"):
        store.create(name="x" * 500)


def test_keys_persist_and_other_processes_see_changes_after_the_cache_ttl(tmp_path):
    path = tmp_path / "shared.sqlite3"
    writer = KeyStore(path)
    reader = KeyStore(path, cache_ttl=0)  # another process: its own connection and cache
    record, plaintext = writer.create(tier="free")
    assert reader.verify(plaintext) == record
    writer.revoke(record.id)
    assert reader.verify(plaintext) is None
    writer.close()
    reopened = KeyStore(path)
    assert reopened.get(record.id).revoked_at is not None
    reopened.close()
    reader.close()


def test_generated_admin_key_is_stored_hashed(store):
    assert store.admin_key_hash() is None
    plaintext = store.generate_admin_key()
    assert store.admin_key_hash() == hashlib.sha256(plaintext.encode()).hexdigest()
    assert store.generate_admin_key() != plaintext  # a new one replaces it


def test_threads_create_and_verify_concurrently(store):
    made: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            record, plaintext = store.create()
            assert store.verify(plaintext) == record
            with lock:
                made.append((record.id, plaintext))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({i for i, _ in made}) == 80
    assert all(store.verify(p) is not None for _, p in made)
