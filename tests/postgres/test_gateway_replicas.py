"""Two `gonka-mux gateway` replicas sharing one PostgreSQL and one Redis.

Each replica is its own process on its own port, started from the same config file: the
shipped ``docker/replicas.toml`` (``[gateway] database_url``: keys, usage and jobs in PostgreSQL;
limits and sessions in Redis; memory in PostgreSQL), pointed at this test's servers, with fake
backends for its vLLM node. What one replica does must hold on the other: a key made or
revoked on A is honoured on B (revocation within 1 s), one key's rpm limit holds across both,
usage from both is reported once, and a job submitted on A is delivered exactly once when A is
SIGKILLed right after accepting it.

The first tests check the key store and the config key on their own.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from tests._postgres import PostgresServer, free_port
from tests.postgres._fleet import (
    ADMIN_KEY,
    CLI,
    GatewayProcess,
    base_env,
    create_key,
    shipped_config,
    wait_for_usage,
)
from tests.webhooks.webhook_receiver import SECRET, running_receiver

from gonka_mux import AsyncMultiplexer, StoreUnavailableError
from gonka_mux.gateway import KeyStoreError, PostgresKeyStore, create_app, open_key_store
from gonka_mux.testing import FakeBackend

TINY_RPM = 3
PG_PASSWORD = "pgpw" + secrets.token_hex(8)


# -- the key store on its own ---------------------------------------------------------------


def test_postgres_key_store_matches_the_sqlite_api(postgres_url: str) -> None:
    store = open_key_store(postgres_url)
    assert isinstance(store, PostgresKeyStore)
    other = PostgresKeyStore(postgres_url)  # a second replica's view of the same database
    record, plaintext = store.create(name="agent", tier="pro")
    assert other.verify(plaintext) == record
    assert other.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert other.verify("gmx_000000000000_" + "x" * 43) is None  # unknown id
    assert other.verify("not a key") is None
    assert [k.id for k in other.list()] == [record.id]
    assert other.set_tier(record.id, "free").tier == "free"
    assert store.get(record.id).tier == "free"
    assert not store.revoke(record.id).active
    time.sleep(other.cache_ttl + 0.05)
    assert other.verify(plaintext) is None
    assert other.list(include_revoked=False) == []
    with pytest.raises(KeyStoreError):
        store.create(tier="no spaces allowed")
    # the generated admin key: stored hashed, visible to every replica
    admin = store.generate_admin_key()
    assert admin not in (other.admin_key_hash() or "")
    assert other.admin_key_hash() is not None
    # the memory quota's accounting is shared too
    store.memory_set(record.id, "ns", "a", 10)
    other.memory_set(record.id, "ns", "b", 5)
    other.memory_set(record.id, "ns", "a", 7)  # replaced, not added
    assert store.memory_used(record.id) == 12
    assert store.memory_used(record.id, exclude=("ns", "a")) == 5
    other.memory_forget(record.id, "ns", "b")
    assert store.memory_used(record.id) == 7
    store.close()
    other.close()


def test_unreachable_key_database_is_typed_and_keeps_the_password_out() -> None:
    url = f"postgresql://gonka:hunter2secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresKeyStore(url, timeout=1.0)
    assert "hunter2secret" not in str(caught.value)
    assert caught.value.backend == "postgresql"


def _terminate(server: PostgresServer, database_url: str, *, allow: bool) -> None:
    """Drop every connection to the test's database (a restart, a failover) and let new ones
    in, or not (the database is away)."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )


async def test_the_key_database_going_away_is_503_and_coming_back_is_seamless(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Dropped connections (a restart) cost no request; while the database is away, requests
    that need it get 503 store_unavailable with Retry-After (never 500, never 401); once it is
    back, they work again."""
    store = PostgresKeyStore(postgres_url, timeout=1.0)
    _, plaintext = store.create(tier="default")
    auth = {"Authorization": f"Bearer {plaintext}"}
    with FakeBackend(models=["m"]) as backend:
        mux = AsyncMultiplexer()
        mux.add_endpoint(backend.url, models=["m"])
        app = create_app(mux, keys=store, admin_key=None)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                _terminate(postgres_server, postgres_url, allow=True)
                await asyncio.sleep(store.cache_ttl + 0.05)  # the key must be looked up again
                assert (await client.get("/v1/models", headers=auth)).status_code == 200
                _terminate(postgres_server, postgres_url, allow=False)
                await asyncio.sleep(store.cache_ttl + 0.05)
                away = await client.get("/v1/models", headers=auth)
                assert away.status_code == 503, away.text
                assert away.json()["error"]["code"] == "store_unavailable"
                assert int(away.headers["Retry-After"]) >= 1
                _terminate(postgres_server, postgres_url, allow=True)
                deadline = time.monotonic() + 30
                while (back := await client.get("/v1/models", headers=auth)).status_code == 503:
                    assert time.monotonic() < deadline, back.text
                    await asyncio.sleep(0.2)
                assert back.status_code == 200, back.text
        finally:
            await mux.aclose()
            store.close()


def test_database_url_is_checked(tmp_path: Path) -> None:
    with FakeBackend(models=["m"]) as backend:
        for gateway_table, wanted in (
            ('database_url = "mysql://u:hunter2secret@db/x"', "database_url"),
            ("database_url = 5", "database_url"),
            (
                'database_url = "postgresql://u:hunter2secret@db/x"\nkeys_db = "k.sqlite3"',
                "keys_db",
            ),
        ):
            config = tmp_path / "bad.toml"
            config.write_text(
                f'[[endpoints]]\nbase_url = "{backend.url}"\nmodels = ["m"]\n\n'
                f"[gateway]\n{gateway_table}\n"
            )
            result = subprocess.run(
                [*CLI, "gateway", "--config", str(config)],
                env=base_env(tmp_path / "state"),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 2, result.stderr
            assert wanted in result.stderr
            assert "hunter2secret" not in result.stderr + result.stdout


# -- two replicas -------------------------------------------------------------------------


class Replicas:
    def __init__(
        self, a: GatewayProcess, b: GatewayProcess, database_url: str, tmp: Path, config: Path
    ) -> None:
        self.a, self.b, self.database_url, self.tmp = a, b, database_url, tmp
        self.config = config


@pytest.fixture(scope="module")
def replicas(
    postgres_server: PostgresServer, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    # The test server trusts local connections, so a password in the URL is accepted (and
    # ignored): it is there to be looked for in the logs at the end.
    database_url = re.sub(
        r"^(postgresql://[^:@/]+)@", rf"\1:{PG_PASSWORD}@", postgres_server.fresh_database()
    )
    assert PG_PASSWORD in database_url
    # "slow" answers after 2 s, so a job submitted on A is still running when A is killed.
    with (
        FakeBackend(models=["m"], name="fast") as fast,
        FakeBackend(models=["slow"], name="slow", faults={"latency": 2.0}) as slow,
    ):
        config = tmp / "gonka-mux.toml"
        config.write_text(
            shipped_config("replicas.toml", database_url, redis_url, fast.url, slow.url, TINY_RPM)
        )
        a = GatewayProcess(config, tmp / "a", "replica-a")
        try:
            b = GatewayProcess(config, tmp / "b", "replica-b")
        except BaseException:
            a.stop()
            raise
        try:
            yield Replicas(a, b, database_url, tmp, config)
        finally:
            a.stop()
            b.stop()


def test_a_key_made_on_one_replica_works_on_the_other_and_revocation_reaches_it(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    key_id, key = create_key(a, tier="pro")
    assert b.chat(key).status_code == 200  # B has never seen it: no stale "unknown" cache
    assert b.admin("GET", f"/admin/keys/{key_id}").json()["active"] is True
    assert b.chat(key).status_code == 200  # now it is in B's cache
    assert a.admin("DELETE", f"/admin/keys/{key_id}").status_code == 200
    revoked_at = time.monotonic()
    assert a.chat(key).status_code == 401  # the replica that revoked it: at once
    # The promise is "refused within 1 s": any request B serves from 1 s on is refused.
    time.sleep(max(0.0, 1.0 - (time.monotonic() - revoked_at)))
    refused = b.chat(key)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert b.admin("GET", f"/admin/keys/{key_id}").json()["active"] is False


def test_the_keys_cli_manages_the_shared_keys(replicas: Replicas) -> None:
    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "gateway", "keys", *args, "--config", str(replicas.config)],
            env=base_env(replicas.tmp / "cli-state"),
            capture_output=True,
            text=True,
            timeout=120,
        )

    created = keys("create", "--name", "from-cli", "--tier", "pro")
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines())
    key_id, key = fields["id"].strip(), fields["key"].strip()
    assert replicas.a.chat(key).status_code == 200
    assert replicas.b.chat(key).status_code == 200
    listed = keys("list")
    assert key_id in listed.stdout and key not in listed.stdout
    assert keys("revoke", key_id).returncode == 0
    time.sleep(1.0)
    assert replicas.a.chat(key).status_code == 401
    assert replicas.b.chat(key).status_code == 401
    # nothing was written to a local key file instead
    assert not list((replicas.tmp / "cli-state").glob("gateway-keys*"))


def test_one_keys_rpm_limit_holds_across_both_replicas(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    _, key = create_key(a, tier="tiny")
    statuses: dict[str, list[int]] = {"a": [], "b": []}
    started = time.monotonic()
    for i in range(4 * TINY_RPM):
        name, gateway = ("a", a) if i % 2 == 0 else ("b", b)
        statuses[name].append(gateway.chat(key).status_code)
    elapsed = time.monotonic() - started
    allowed = sum(s == 200 for s in statuses["a"] + statuses["b"])
    assert set(statuses["a"] + statuses["b"]) <= {200, 429}, statuses
    # GCRA: a burst of rpm, then one more per 60/rpm seconds of the test's own duration.
    assert 1 <= allowed <= TINY_RPM + math.ceil(elapsed * TINY_RPM / 60), (elapsed, statuses)
    # each replica alone would have allowed its first TINY_RPM requests: both refused some
    assert 429 in statuses["a"] and 429 in statuses["b"], statuses


def test_usage_from_both_replicas_is_reported_once(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    key_id, key = create_key(a, tier="pro")
    made = 0
    for gateway, count in ((a, 3), (b, 4)):
        for _ in range(count):
            assert gateway.chat(key).status_code == 200
            made += 1
    wait_for_usage(replicas.database_url, key_id, made, replicas.tmp / "cli-state")
    time.sleep(1.5)  # past both meters' flush interval: nothing more may arrive
    wait_for_usage(replicas.database_url, key_id, made, replicas.tmp / "cli-state")


def test_a_job_accepted_by_a_killed_replica_is_delivered_once(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    key_id, key = create_key(a, tier="pro")
    auth = {"Authorization": f"Bearer {key}"}
    with running_receiver() as receiver:
        request = {"model": "slow", "messages": [{"role": "user", "content": "background"}]}
        submitted = a.client.post(
            "/v1/jobs",
            json={"request": request, "webhook_url": receiver.url, "webhook_secret": SECRET},
            headers=auth,
        )
        assert submitted.status_code == 202, submitted.text
        a.kill()  # right after accepting it: A's answer from upstream takes 2 s
        job_id = submitted.json()["id"]
        # Nobody asks B about the job: B's job runner, started with B, takes over what A left
        # once A's lease runs out.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not receiver.job_process_count[job_id]:
            time.sleep(0.25)
        assert receiver.job_process_count[job_id] == 1, (receiver.received, b.log.read_text())
        polled = b.client.get(f"/v1/jobs/{job_id}", headers=auth)
        assert polled.status_code == 200, polled.text
        assert polled.json()["status"] == "succeeded", polled.text
        time.sleep(2.0)  # a second delivery (a duplicate) would come within the retry delay
        assert receiver.job_process_count[job_id] == 1
        for_job = [r for r in receiver.received if json.loads(r.body)["job"]["id"] == job_id]
        assert all(r.verified for r in for_job)
        assert len({r.delivery_id for r in for_job}) == 1, for_job
    # A's acceptance and B's run are one job in the shared store; usage counts it once
    wait_for_usage(replicas.database_url, key_id, 1, replicas.tmp / "cli-state")


def test_no_secret_reaches_a_replicas_log(replicas: Replicas) -> None:
    logs = replicas.a.log.read_text() + replicas.b.log.read_text()
    assert "Uvicorn running on" in logs  # the real logs (at info level) were read
    assert PG_PASSWORD not in logs
    assert ADMIN_KEY not in logs
