"""``vlf train --config train.yaml``: a training recipe written in TRL's and PEFT's own names.

Users come with a ``DPOConfig`` and a ``LoraConfig`` in mind, so the file takes those names, which
the request's contracts carry too: ``beta``, ``loss_type``, ``num_train_epochs``,
``per_device_train_batch_size`` ... at the top, and ``r``, ``lora_alpha``, ``lora_dropout`` under
``lora:``. Unset keys keep the paper's values (the ``TrainRequest`` defaults). The file becomes a
request on a topic, which the trainer turns into a run on the cluster's GPUs and disks, so only the
recipe is accepted: TRL's fields that say where files go, what is uploaded and with which token
(``output_dir``, ``push_to_hub``, ``hub_token``, ``deepspeed``, ...) are set by the trainer service
and refused here with that reason, and any other key is refused with the names that are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from shared.contracts import events as ev

ModelT = TypeVar("ModelT", ev.TrainHyperparams, ev.LoraSpec)

# The contracts carry DPOConfig's and LoraConfig's own names, so the file's keys are their fields.
DPO_FIELDS = tuple(ev.TrainHyperparams.model_fields)
LORA_FIELDS = tuple(ev.LoraSpec.model_fields)
# TrainingArguments / DPOConfig / LoraConfig fields the trainer service sets for every run.
TRAINER_OWNED = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "logging_dir",
        "report_to",
        "run_name",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "hub_strategy",
        "hub_private_repo",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        "resume_from_checkpoint",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "local_rank",
        "ddp_backend",
        "disable_dropout",
        "max_length",
        "model_init_kwargs",
        "ref_model_init_kwargs",
        "precompute_ref_log_probs",
        "target_modules",
        "task_type",
    }
)


class TrainConfigError(ValueError):
    """The file cannot become a training request; the message says which key and why."""


def read_train_config(path: Path) -> tuple[ev.TrainHyperparams, ev.LoraSpec]:
    """The hyperparameters and LoRA settings a recipe file sets (the paper's for the rest)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise TrainConfigError(f"{path}: cannot read it: {error}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise TrainConfigError(f"{path}: expected a mapping of DPOConfig names, got {type(loaded).__name__}")
    lora = loaded.pop("lora", None) or {}
    if not isinstance(lora, dict):
        raise TrainConfigError(f"{path}: lora: expected a mapping of LoraConfig names")
    if isinstance(loaded.get("loss_type"), str):  # DPOConfig takes one loss name or a list
        loaded["loss_type"] = [loaded["loss_type"]]
    _check_keys(path, loaded, DPO_FIELDS, "DPOConfig", "")
    _check_keys(path, lora, LORA_FIELDS, "LoraConfig", "lora.")
    return _validated(path, ev.TrainHyperparams, loaded, ""), _validated(path, ev.LoraSpec, lora, "lora.")


def _check_keys(path: Path, given: dict[str, Any], names: tuple[str, ...], source: str, prefix: str) -> None:
    for key in given:
        if key in TRAINER_OWNED:
            raise TrainConfigError(
                f"{path}: {prefix}{key} is set by the trainer service for every run (where files go, "
                "what is uploaded and with which credentials are not taken from a request)"
            )
        if key not in names:
            raise TrainConfigError(
                f"{path}: unknown key {prefix}{key}; {source} names accepted: {', '.join(sorted(names))}"
                + ("; LoraConfig names go under lora:" if not prefix else "")
            )


def _validated(path: Path, contract: type[ModelT], fields: dict[str, Any], prefix: str) -> ModelT:
    try:
        return contract(**fields)
    except ValidationError as error:
        problems = "; ".join(f"{prefix}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise TrainConfigError(f"{path}: {problems}") from None
