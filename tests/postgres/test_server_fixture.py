"""The PostgreSQL fixture starts a real server and hands each test its own database."""

from __future__ import annotations

import psycopg


def test_each_test_gets_an_empty_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
