"""Set-up shared by the service integration tests: registry files, images, settings, service processes."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import yaml
from PIL import Image

from shared.settings import CommonSettings
from tests.integration.kafka_helpers import service_env, start_process

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def png(colour: str, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def write_registry(
    path: Path, base_url: str, model_ids: list[str], k: int, judges: list[dict] | None = None
) -> Path:
    registry = {
        "models_per_instruction": k,
        "models": [
            {
                "id": m,
                "backend": "openai",
                "model": "test-model",
                "base_url": base_url,
                "concurrency": 8,
                "timeout_s": 5,
                "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 32},
            }
            for m in model_ids
        ],
        "judges": judges or [],
    }
    path.write_text(yaml.safe_dump(registry))
    return path


class Pipeline:
    """Environment for services of one test: broker namespace, ledger, blob store, registry."""

    def __init__(self, bootstrap: str, namespace: str, ledger_url: str, tmp: Path, registry: Path) -> None:
        self.tmp = tmp
        self.blob_dir = tmp / "blobs"
        self.env = service_env(
            bootstrap,
            namespace,
            ledger_url,
            VLF_HTTP_PORT="0",
            VLF_BLOB_URL=str(self.blob_dir),
            VLF_REGISTRY_PATH=str(registry),
            VLF_RETRY_BACKOFF_S="0.1",
        )
        self.settings = CommonSettings(
            kafka_bootstrap_servers=bootstrap,
            topic_namespace=namespace,
            ledger_url=ledger_url,
            blob_url=str(self.blob_dir),
            registry_path=registry,
        )
        self.processes: list[tuple[subprocess.Popen, Path]] = []

    def start(self, module: str, name: str, **env: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        process = start_process(module, {**self.env, **env}, log)
        self.processes.append((process, log))
        return process

    def stop_all(self) -> list[str]:
        """SIGTERM every process; returns the logs of those that did not exit 0."""
        bad = []
        for process, log in self.processes:
            if process.poll() is None:
                process.terminate()
            if process.wait(timeout=60) != 0:
                bad.append(f"{log.name} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        return bad
