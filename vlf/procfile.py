"""Every service of a registry as one Procfile, for honcho (``vlf up``): one process per sampler
model and per judge, plus the pair builder, the trainer and the evaluator."""

from __future__ import annotations

import shlex
import sys

from shared.registry import Registry

FIRST_HTTP_PORT = 8100


def procfile(
    registry: Registry, first_port: int = FIRST_HTTP_PORT, extra_env: dict[str, str] | None = None
) -> str:
    """Procfile text; each process gets its own probe port (first_port, first_port+1, ...)."""
    entries: list[tuple[str, dict[str, str], str]] = []
    for model in registry.models:
        entries.append((f"sampler-{model.id}", {"VLF_SAMPLER_MODEL_ID": model.id}, "services.sampler"))
    for judge in registry.judges:
        entries.append((f"annotator-{judge.id}", {"VLF_ANNOTATOR_JUDGE_ID": judge.id}, "services.annotator"))
    entries += [
        ("pair-builder", {}, "services.pair_builder"),
        ("trainer", {}, "services.trainer"),
        ("evaluator", {}, "services.evaluator"),
    ]
    lines = []
    for port, (name, env, module) in enumerate(entries, start=first_port):
        assignments = {**(extra_env or {}), **env, "VLF_HTTP_PORT": str(port)}
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in assignments.items())
        lines.append(f"{name.replace('.', '-')}: env {env_text} {shlex.quote(sys.executable)} -m {module}")
    return "\n".join(lines) + "\n"
