"""Trainer settings (env prefix ``VLF_TRAINER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import YamlOverlaySettings


class TrainerSettings(YamlOverlaySettings):
    model_config = SettingsConfigDict(env_prefix="VLF_TRAINER_", extra="ignore")

    checkpoint_dir: Path = Field(
        Path(".vlf/checkpoints"), description="Per job: <dir>/<job_id>/ (resumable)."
    )
    job_log_dir: Path = Field(Path(".vlf/jobs/train"), description="Logs of the job processes.")
    max_attempts: int = Field(
        3, ge=1, description="Starts of a job that dies without a result before giving up."
    )
    max_parallel_jobs: int = Field(1, ge=1, description="Jobs run at once on this node.")
    save_steps: int = Field(
        50, ge=1, description="Checkpoint interval in optimizer steps (resume granularity)."
    )
    report_to: list[str] = Field(
        ["tensorboard"],
        description="Experiment trackers, by transformers' report_to names (tensorboard, trackio, wandb, "
        "mlflow, ...); each run is named after its job. Trackers that are not installed are left out with "
        "a warning. TensorBoard writes to <checkpoint_dir>/<job_id>/runs/, with no account or network.",
    )
    launcher: Literal["process", "kubernetes"] = Field(
        "process",
        description="Where jobs run: child processes of the service, or one Kubernetes Job per run.",
    )
    job_template_path: Path | None = Field(
        None, description="kubernetes launcher: the Job manifest template (the chart mounts it)."
    )
    namespace: str = Field("default", description="kubernetes launcher: where the Jobs are created.")

    @model_validator(mode="after")
    def _kubernetes_needs_a_template(self) -> TrainerSettings:
        if self.launcher == "kubernetes" and self.job_template_path is None:
            raise ValueError("launcher=kubernetes needs VLF_TRAINER_JOB_TEMPLATE_PATH (the Job template)")
        return self
