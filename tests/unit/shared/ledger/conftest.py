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
    url = ledger_url
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        empty = Ledger(url)
        with empty.engine.begin() as connection:  # each test starts from an empty schema
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        empty.close()
    led = Ledger(url)
    led.migrate()
    yield led
    led.close()
