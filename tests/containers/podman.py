"""Service containers run as the chart runs them: uid 10001, read-only root filesystem, every
capability dropped, no privilege escalation, writable only where a volume is mounted (/tmp and the
test's data folder). podman with runc: crun refuses this machine's hybrid cgroups."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CPU_IMAGE = "localhost/vlf:cpu"
TRAIN_IMAGE = "localhost/vlf:cpu-train"
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def require_image(image: str) -> None:
    if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode != 0:
        pytest.fail(f"{image} is not built: run `make images` (docker/build-images.sh)", pytrace=False)


@dataclass
class Container:
    name: str
    port: int

    def logs(self) -> str:
        out = subprocess.run([*PODMAN, "logs", self.name], capture_output=True, text=True)
        return out.stdout + out.stderr

    def state(self) -> dict:
        out = subprocess.run(
            [*PODMAN, "inspect", "--format", "{{json .State}}", self.name], capture_output=True, text=True
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def wait_ready(self, host: str, timeout_s: float = 90) -> httpx.Response:
        """``/readyz`` on ``host`` (not loopback: the server must listen where probes reach it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.state().get("Running", False):
                raise AssertionError(f"{self.name} stopped: {self.state()}\n{self.logs()[-3000:]}")
            try:
                response = httpx.get(f"http://{host}:{self.port}/readyz", timeout=2)
                if response.status_code == 200:
                    return response
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not ready on {host}:{self.port}\n{self.logs()[-3000:]}")

    def stop(self, timeout_s: int = 30) -> int:
        """SIGTERM, then the exit code (a graceful stop exits 0)."""
        subprocess.run([*PODMAN, "stop", "--time", str(timeout_s), self.name], capture_output=True)
        code = self.state().get("ExitCode", -1)
        subprocess.run([*PODMAN, "rm", "--force", self.name], capture_output=True)
        return code


def run_service(
    image: str, module: str, port: int, env: dict[str, str], data_dir: Path, registry: Path
) -> Container:
    """Start ``python -m module`` in ``image`` on the host network; ``data_dir`` is mounted at /data."""
    name = f"vlf-test-{module.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}"
    env_args = [
        arg for key, value in {**env, "VLF_HTTP_PORT": str(port)}.items() for arg in ("-e", f"{key}={value}")
    ]
    command = [
        *PODMAN, "run", "--detach", "--name", name, *LIMITS,
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "10001:10001", "--network", "host",
        "--tmpfs", "/tmp:rw,size=256m,mode=1777",
        "--volume", f"{data_dir}:/data:rw",
        "--volume", f"{registry}:/etc/vlf/registry.yaml:ro",
        "-e", "VLF_REGISTRY_PATH=/etc/vlf/registry.yaml",
        *env_args, image, module,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"podman run failed ({result.returncode}): {result.stderr}")
    return Container(name, port)
