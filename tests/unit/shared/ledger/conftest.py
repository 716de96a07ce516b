"""Every ledger test runs on SQLite (the default) and on a real PostgreSQL server (production)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.ledger import Ledger
from tests.postgres_server import postgres_server


@pytest.fixture(scope="session")
def postgres_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, ledger_url):
    postgres = request.param == "postgresql"
    led = Ledger(request.getfixturevalue("postgres_url") if postgres else ledger_url)
    if postgres:
        with led.engine.begin() as connection:  # each test starts from an empty schema
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    led.migrate()
    yield led
    led.close()
