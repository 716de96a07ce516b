"""Shared fixtures. Integration tests run against a real broker: the one named by
``VLF_TEST_KAFKA_BOOTSTRAP`` (CI and ``make test`` start one with ``devkit.kafka_local``), or else
one this session starts on a free port and stops at the end. Never a guess."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    named = os.environ.get("VLF_TEST_KAFKA_BOOTSTRAP")
    if named:
        yield named
        return
    from devkit.kafka_local import BrokerConfig, free_ports, start_broker, stop_broker

    cfg = BrokerConfig(port=free_ports(2), data_dir=tmp_path_factory.mktemp("kafka"))
    yield start_broker(cfg)
    stop_broker(cfg)


@pytest.fixture
def namespace() -> str:
    """A fresh topic namespace per test: tests share the broker, never each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger(ledger_url):
    """A migrated SQLite ledger in the test's own folder (the file services under test share)."""
    from shared.ledger import Ledger

    led = Ledger(ledger_url)
    led.migrate()
    yield led
    led.close()
