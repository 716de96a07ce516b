"""Attacks on what operators see and feed in: probes, start-up errors, the CLI and image intake.

Each test is one attack, asserting what the operator relies on: secrets stay hidden, a bad input is
one refused line with a reason they can act on, and nothing crashes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from shared.blobs.errors import ImageSourceRefused, InvalidImage
from shared.blobs.images import ImagePolicy, load_image_source, validate_image
from shared.blobs.store import BlobStore
from shared.http.app import create_app
from shared.ledger import Ledger
from shared.runtime.service import settings_view
from shared.settings import CommonSettings
from vlf import dlq_tools
from vlf.cli import app as vlf

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-Sup3rSecret"
SHORT_PASSWORD = "Zq9!xk"


def png(colour: str = "red", size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


class StubRuntime:
    registry = CollectorRegistry()

    def alive(self) -> bool:
        return True

    def readiness(self) -> dict[str, str]:
        return {"kafka": "ok"}

    def info(self) -> dict:
        return {"service": "stub"}


class RecordingPublisher:
    """Stands in for the Kafka publisher: ``vlf submit`` is tested without a broker."""

    published: list = []

    def __init__(self, settings: CommonSettings) -> None:
        pass

    def __enter__(self) -> RecordingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def publish(self, events: list) -> None:
        RecordingPublisher.published.extend(events)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A local ledger and blob store, no registry, no broker; the working directory is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("VLF_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VLF_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("VLF_BLOB_URL", str(tmp_path / "blobs"))
    monkeypatch.setenv("VLF_REGISTRY_PATH", str(tmp_path / "no-registry.yaml"))
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr("shared.runtime.admin.EventPublisher", RecordingPublisher)
    RecordingPublisher.published = []
    return tmp_path


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- 1. secrets in plain sight


def test_info_shows_the_ledger_url_without_its_password():
    settings = CommonSettings(ledger_url=f"postgresql+psycopg://vlf:{PASSWORD}@db.internal:5432/vlf")
    app = create_app(StubRuntime(), settings_view=settings_view(settings))

    body = TestClient(app).get("/info").text

    assert PASSWORD not in body
    assert "db.internal:5432/vlf" in body  # the operator still sees which database it uses


def test_a_refused_sasl_setting_does_not_print_the_password_at_start_up(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "VLF_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "VLF_KAFKA_SASL_PASSWORD": SHORT_PASSWORD,  # short: pydantic's shortened input repr shows it whole
    }
    started = subprocess.run(
        [sys.executable, "-m", "services.pair_builder"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert started.returncode != 0
    output = started.stdout + started.stderr
    assert SHORT_PASSWORD not in output
    assert "needs kafka_sasl_mechanism, kafka_sasl_username and kafka_sasl_password" in output


# ---------------------------------------------------------------- 2. animated images


def gif(frame_count: int) -> bytes:
    frames = [Image.new("RGB", (8, 8), ("red", "blue")[i % 2]) for i in range(frame_count)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=10)
    assert Image.open(io.BytesIO(out.getvalue())).n_frames == frame_count
    return out.getvalue()


def test_a_gif_of_two_thousand_frames_is_refused_for_its_frame_count():
    with pytest.raises(InvalidImage, match="too many frames: 2000 > 100"):
        validate_image(gif(2000), ImagePolicy())
    assert validate_image(gif(10), ImagePolicy()).format == "GIF"  # a short animation still passes


# ---------------------------------------------------------------- 3. vlf import validates images


def test_vlf_import_refuses_an_image_vlf_submit_refuses(tmp_path):
    from services.pair_builder.dataset_io import import_vlfeedback

    images = tmp_path / "images"
    images.mkdir()
    (images / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really an image")
    record = {
        "id": "poisoned-0001",
        "prompt": "Describe the image.",
        "models": ["a"],
        "img_path": "fake.png",
        "completions": [{"model": "a", "response": "A cat.", "annotations": {}}],
    }
    source = write_lines(tmp_path / "v.jsonl", [record])
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()

    report = import_vlfeedback(
        source, images, ledger, BlobStore(str(tmp_path / "blobs")), show_progress=False
    )

    assert report.records_imported == 0 and report.refused_images == 1
    assert any("poisoned-0001" in p and "undecodable image" in p for p in report.problems)
    ledger.close()


# ---------------------------------------------------------------- 4. SSRF through embedded IPv4


@pytest.mark.parametrize(
    "literal",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:a00:1",  # IPv4-mapped 10.0.0.1
    ],
)
def test_an_ipv6_address_embedding_a_private_ipv4_is_refused(literal):
    policy = ImagePolicy(allowed_url_hosts=frozenset({literal}), fetch_timeout_s=1)

    with pytest.raises(ImageSourceRefused, match="non-public"):
        load_image_source(f"https://[{literal}]/cat.png", policy)


# ---------------------------------------------------------------- 5. rich markup in user data


def _submit_one_good_and(cli_env, bad: dict, bad_first: bool = False) -> str:
    """``vlf submit`` of a batch holding one good line and ``bad``: the good one must be published."""
    (cli_env / "ok.png").write_bytes(png())
    good = {"prompt": "What is it?", "image": "ok.png"}
    batch = write_lines(cli_env / "batch.jsonl", [bad, good] if bad_first else [good, bad])

    result = CliRunner().invoke(vlf, ["submit", str(batch)])

    assert result.exception is None, result.output
    assert "published 1 instructions" in result.output
    return result.output


def test_vlf_submit_prints_a_refusal_reason_holding_markup_as_text(cli_env):
    output = _submit_one_good_and(cli_env, {"prompt": "Which?", "image": "evil[/]x[bold].png"})

    assert "batch.jsonl:2" in output and "evil[/]x[bold].png" in output


def test_vlf_dlq_show_prints_a_dead_letter_holding_markup_as_text(cli_env, monkeypatch):
    letter = dlq_tools.DeadLetter(
        partition=0,
        offset=7,
        key=b"k",
        value=b'{"prompt": "[/] [link=http://evil]x"}',
        original_headers=[],
        details={"error.class": "InvalidImage", "error.message": "bad [/] image", "attempts": "1"},
    )
    monkeypatch.setattr(dlq_tools, "read_dead_letters", lambda *a, **k: [letter])
    monkeypatch.setattr(dlq_tools, "replay_marks", lambda *a, **k: {0: dlq_tools.ReplayMark(next_offset=0)})

    result = CliRunner().invoke(vlf, ["dlq", "show", "vlf.instructions.v1"])

    assert result.exception is None, result.output
    assert "bad [/] image" in result.output and "[link=http://evil]" in result.output


# ---------------------------------------------------------------- 6. NUL byte in a path


def test_a_nul_byte_in_a_submitted_path_refuses_that_line_only(cli_env):
    output = _submit_one_good_and(cli_env, {"prompt": "Which?", "image": "ok\x00.png"}, bad_first=True)

    assert "refused batch.jsonl:1" in output and "unusable image path" in output
    assert len(RecordingPublisher.published) == 1
