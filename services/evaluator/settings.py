"""Evaluator settings (env prefix ``VLF_EVALUATOR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.evaluator.mme import ALL_SUBTASKS
from shared.settings import YamlOverlaySettings

Benchmark = Literal["mme", "mmhal", "mmvet", "preference_accuracy", "greedy_accuracy"]
KNOWN_BENCHMARKS: tuple[str, ...] = ("mme", "mmhal", "mmvet", "preference_accuracy", "greedy_accuracy")


class EvaluatorSettings(YamlOverlaySettings):
    """Which benchmarks a checkpoint gets, where their files are, and how the model answers.

    Defaults: MME and held-out preference accuracy for every checkpoint, benchmark files under
    ``.vlf/benchmarks``, greedy answers of at most 128 tokens, two attempts per job.
    """

    model_config = SettingsConfigDict(env_prefix="VLF_EVALUATOR_", extra="ignore")

    # --- what a checkpoint gets ---
    auto_benchmarks: list[Benchmark] = Field(
        default_factory=lambda: ["mme", "preference_accuracy"],
        min_length=1,
        description="Benchmarks run for every new checkpoint, on the tuned and on the base model.",
    )

    # --- MME ---
    mme_root: Path = Field(
        Path(".vlf/benchmarks/mme"), description="The MME_Benchmark_release_version folder."
    )
    mme_subtasks: list[str] | None = Field(
        None, description="Subtasks to run (JSON list in the environment); None: all 14, as published."
    )

    # --- MMHal-Bench ---
    mmhal_path: Path = Field(
        Path(".vlf/benchmarks/mmhal/response_template.json"),
        description="The official MMHal-Bench JSON file (96 records).",
    )
    mmhal_images: Path = Field(
        Path(".vlf/benchmarks/mmhal/images"), description="Folder of the images named by image_src."
    )
    mmhal_judge_id: str | None = Field(
        None, description="Registry judge used as MMHal-Bench's text-only judge (the paper: GPT-4)."
    )
    mmhal_judge_template: Path | None = Field(
        None, description="File with the judge prompt (e.g. the official one); None: our wording."
    )

    # --- MM-Vet ---
    mmvet_root: Path = Field(
        Path(".vlf/benchmarks/mm-vet"), description="The unzipped mm-vet folder (mm-vet.json, images/)."
    )
    mmvet_judge_id: str | None = Field(
        None, description="Registry judge used as MM-Vet's grader (the paper: GPT-4)."
    )
    mmvet_grader_prompt: Path | None = Field(
        None, description="File with the grader's few-shot prompt (e.g. the official one); None: ours."
    )
    mmvet_runs: int = Field(
        1, ge=1, le=7, description="Grading runs averaged, with their std (the MM-Vet paper: 5)."
    )

    # --- greedy accuracy and held-out preference accuracy ---
    greedy_eval_path: Path = Field(
        Path(".vlf/benchmarks/greedy.jsonl"),
        description='JSONL of {"image": path, "prompt": ..., "reference": short answer}; '
        "relative image paths are read from the file's folder.",
    )
    heldout_strategy: str = Field("vlfeedback", description="Pair strategy of the held-out pairs.")
    beta: float = Field(0.1, gt=0, description="DPO beta of the implicit reward (the paper's 0.1).")

    # --- generation ---
    batch_size: int = Field(8, ge=1, description="Items per generation or log-prob batch.")
    max_new_tokens: int = Field(128, ge=1, description="Longest greedy answer, in tokens.")

    # --- jobs ---
    max_attempts: int = Field(
        2, ge=1, description="Runs of a job that died without a result before giving up."
    )
    job_log_dir: Path = Field(
        Path(".vlf/jobs/eval"), description="Job logs, and per job the official-format answer files."
    )

    @model_validator(mode="after")
    def _known_subtasks(self) -> EvaluatorSettings:
        unknown = sorted(set(self.mme_subtasks or ()) - set(ALL_SUBTASKS))
        if unknown or self.mme_subtasks == []:
            raise ValueError(
                f"mme_subtasks={self.mme_subtasks} must be a non-empty list of {list(ALL_SUBTASKS)} "
                f"(unknown: {unknown})"
            )
        return self
