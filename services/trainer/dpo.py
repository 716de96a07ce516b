"""The DPO core of the trainer service: preference pairs in, a LoRA adapter or a full model out.

It runs TRL's ``DPOTrainer`` on TRL's conversational vision preference format, with the paper's
recipe as defaults, resumes from the last checkpoint in the output folder, and reports progress
through a callback (the service publishes it; this module knows nothing of Kafka or the ledger).

Faster than plain TRL: the reference model is fixed, so its log-probs are computed once before
training (no gradients, batched, cached on disk) and read from the dataset columns
``ref_chosen_logps``/``ref_rejected_logps`` instead of a reference forward at every step. TRL
refuses its own ``precompute_ref_log_probs`` for image data; ``PrecomputedRefDPOTrainer`` sets the
flag its loss reads, keeps the two columns through column pruning and collates them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from datasets import Dataset
from peft import LoraConfig
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    TrainerCallback,
)
from transformers.integrations import TensorBoardCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import disable_dropout_in_model

from services.trainer.reference import REF_COLUMNS, PrecomputedRefDPOTrainer, VisionPreferenceWithRefCollator
from shared.contracts import events as ev
from shared.ml.logps import completion_logps, fused_log_probs
from shared.ml.preference_data import PairRecord, pairs_digest, preference_dataset

__all__ = [
    "DpoJobConfig",
    "PairRecord",
    "PrecomputedRefDPOTrainer",
    "ProgressUpdate",
    "TrainOutcome",
    "train",
]

# Where image-text-to-text models keep their vision encoder, under ``model.model``.
VISION_TOWER_ATTRIBUTES = ("visual", "vision_tower", "vision_model")
# The language model's linear layers, never the vision tower's (CLIP also has q_proj/k_proj/v_proj).
LANGUAGE_MODEL_LINEAR_LAYERS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


log = logging.getLogger(__name__)


class DpoJobConfig(BaseModel):
    """One DPO run: the request's hyperparameters and LoRA settings (TRL's and PEFT's names, the
    paper's defaults: LoRA r=64 alpha=16 dropout 0.05 on the language model, vision tower frozen,
    beta 0.1, lr 1e-5 cosine with 10% warmup, weight decay 0.05, Adam beta2 0.98, 3 epochs, batch
    2 x grad-accum 8 per device, bf16 on GPU, gradient checkpointing) and what the service adds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # What is trained
    base_model: str = Field(description="Local folder or hub id of an image-text-to-text model.")
    use_lora: bool = Field(True, description="Train a LoRA adapter; False trains all non-vision weights.")
    lora: ev.LoraSpec = ev.LoraSpec()
    merge_adapter: bool = Field(False, description="Save the base model with the adapter merged in.")
    hparams: ev.TrainHyperparams = ev.TrainHyperparams()

    run_facts: dict[str, str | int | float] = Field(
        default_factory=dict,
        description="The pipeline's figures (pairs, judges, strategy, ...), logged as the run's config.",
    )

    # How the reference pass runs
    precompute_ref_logps: bool = Field(True, description="Reference log-probs once, before training.")
    precompute_batch_size: int = Field(8, ge=1, description="Pairs per reference forward (no gradients).")
    max_length: int | None = Field(2048, ge=1, description="Tokens per sequence, image tokens included.")

    # Checkpoints
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(2, ge=1)

    # Experiment tracking
    report_to: list[str] = Field(default_factory=list, description="transformers' report_to names.")
    run_name: str | None = Field(None, description="The run's name in the trackers (the job id).")


class ProgressUpdate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    total_steps: int
    epoch: float
    loss: float
    reward_margin: float
    reward_accuracy: float
    pairs_per_s: float
    eta_s: float


ArtifactKind = Literal["adapter", "merged", "full"]


class TrainOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    artifact_dir: Path
    kind: ArtifactKind
    metrics: dict
    steps: int


ProgressCallback = Callable[[ProgressUpdate], None]


class ProgressReporter(TrainerCallback):
    """Turns the trainer's logs into ``ProgressUpdate``s; throughput counts only this run's steps."""

    def __init__(self, on_progress: ProgressCallback, pairs_per_step: int) -> None:
        self.on_progress = on_progress
        self.pairs_per_step = pairs_per_step
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.started = time.perf_counter()
        self.first_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        elapsed = time.perf_counter() - self.started
        steps_done = max(state.global_step - self.first_step, 1)
        seconds_per_step = elapsed / steps_done
        self.on_progress(
            ProgressUpdate(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch or 0.0,
                loss=logs["loss"],
                reward_margin=logs.get("rewards/margins", 0.0),
                reward_accuracy=logs.get("rewards/accuracies", 0.0),
                pairs_per_s=self.pairs_per_step / seconds_per_step,
                eta_s=(state.max_steps - state.global_step) * seconds_per_step,
            )
        )


class RunFactsLogger(TrainerCallback):
    """The pipeline's figures as the run's config, where a user of a tracker looks: a text panel in
    TensorBoard, the run config in Weights & Biases, parameters in MLflow; and ``vlf_run.json``
    in the run's folder for any other. Added after the trackers' callbacks, so theirs are set up."""

    def __init__(self, facts: dict[str, str | int | float], callbacks: list[TrainerCallback]) -> None:
        self.facts = facts
        self.callbacks = callbacks

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if not self.facts or not state.is_world_process_zero:
            return
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "vlf_run.json").write_text(json.dumps(self.facts, indent=2))
        for callback in self.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                table = "\n".join(
                    ["| fact | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in self.facts.items()]
                )
                callback.tb_writer.add_text("vlf/run", table, global_step=state.global_step)
                callback.tb_writer.flush()
        if "wandb" in args.report_to:
            import wandb

            if wandb.run is not None:
                wandb.run.config.update(self.facts, allow_val_change=True)
        if "mlflow" in args.report_to:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_params({f"vlf.{k}": v for k, v in self.facts.items()})


def use_bf16(config: DpoJobConfig) -> bool:
    bf16 = config.hparams.bf16
    return torch.cuda.is_available() if bf16 is None else bf16


def load_policy(config: DpoJobConfig) -> PreTrainedModel:
    """bf16 weights under LoRA with bf16 (the frozen base only runs forward); else fp32 master weights."""
    dtype = torch.bfloat16 if use_bf16(config) and config.use_lora else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(config.base_model, dtype=dtype)
    freeze_vision_tower(model)
    # The base model's dropout off, as DPO wants (TRL's ``disable_dropout``, which ``dpo_args`` turns
    # off): done here, before PEFT wraps the model, so the adapter's own ``lora_dropout`` stays on.
    disable_dropout_in_model(model)
    return model


def freeze_vision_tower(model: PreTrainedModel) -> None:
    """The paper keeps the vision encoder frozen; so do we, for LoRA and full fine-tuning alike."""
    towers = [getattr(model.model, name) for name in VISION_TOWER_ATTRIBUTES if hasattr(model.model, name)]
    if not towers:
        raise ValueError(f"{type(model).__name__} has none of the vision towers {VISION_TOWER_ATTRIBUTES}")
    for tower in towers:
        tower.requires_grad_(False)


def lora_config(config: DpoJobConfig) -> LoraConfig:
    return LoraConfig(
        **config.lora.model_dump(),
        target_modules=LANGUAGE_MODEL_LINEAR_LAYERS,
        task_type="CAUSAL_LM",
    )


def installed_trackers(wanted: list[str]) -> list[str]:
    """The trackers of ``wanted`` that are installed: a missing one is a warning, not a failed run
    (the chart's default, tensorboard, may be absent from a slim image)."""
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    missing = [name for name in wanted if name not in available]
    if missing:
        log.warning("trackers not installed, left out: %s (installed: %s)", missing, sorted(available))
    return [name for name in wanted if name in available]


def dpo_args(config: DpoJobConfig, output_dir: Path) -> DPOConfig:
    """TRL's config: the request's hyperparameters under their own names, then the service's part."""
    hparams = config.hparams
    return DPOConfig(
        **hparams.model_dump(exclude={"warmup_ratio", "max_steps", "bf16"}),
        # transformers 5 reads a warmup_steps below 1 as a ratio (warmup_ratio is deprecated there)
        warmup_steps=hparams.warmup_ratio,
        max_steps=hparams.max_steps or -1,
        bf16=use_bf16(config),
        output_dir=str(output_dir),
        max_length=config.max_length,
        disable_dropout=False,  # ``load_policy`` does it for the base model only (see there)
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=1,
        report_to=installed_trackers(config.report_to) or "none",
        run_name=config.run_name,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )


def reference_cache_file(config: DpoJobConfig, digest: str, cache_dir: Path) -> Path:
    """Keyed by (base model, data hash, max_length): what the reference log-probs depend on."""
    key = json.dumps([config.base_model, digest, config.max_length, use_bf16(config)])
    return cache_dir / f"ref_logps-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def with_reference_logps(
    dataset: Dataset,
    model: PreTrainedModel,
    processor: ProcessorMixin,
    config: DpoJobConfig,
    cache_file: Path,
    device: torch.device,
) -> Dataset:
    """``dataset`` plus the reference columns, from ``cache_file`` or one no-grad pass over ``model``.

    Runs before any adapter is attached, so ``model`` is the reference: the base model (what LoRA's
    disabled adapters give) or the untouched full model. Every process of a multi-GPU run computes the
    full pass on its own ``device`` (simple and correct; sharding it is a later optimisation).
    """
    if cache_file.exists():
        cached = json.loads(cache_file.read_text())
        chosen, rejected = cached["ref_chosen_logps"], cached["ref_rejected_logps"]
    else:
        model.to(device)
        with fused_log_probs(model):
            chosen, rejected = completion_logps(
                model,
                processor,
                dataset,
                batch_size=config.precompute_batch_size,
                max_length=config.max_length,
                autocast_dtype=torch.bfloat16 if use_bf16(config) else None,
            )
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".partial-{os.getpid()}")
        partial.write_text(json.dumps({"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}))
        partial.replace(cache_file)
    return dataset.add_column(REF_COLUMNS[0], chosen).add_column(REF_COLUMNS[1], rejected)


def build_trainer(
    pairs: list[PairRecord],
    config: DpoJobConfig,
    args: DPOConfig,
    *,
    callbacks: list[TrainerCallback] | None = None,
    cache_dir: Path | None = None,
) -> DPOTrainer:
    """The configured trainer, reference log-probs attached when ``precompute_ref_logps`` is on."""
    processor = AutoProcessor.from_pretrained(config.base_model)
    model = load_policy(config)
    digest = pairs_digest(pairs)  # one pass over every image's bytes, for the dataset and the cache key
    dataset = preference_dataset(pairs, digest=digest)
    common = {
        "model": model,
        "args": args,
        "processing_class": processor,
        "peft_config": lora_config(config) if config.use_lora else None,
        "callbacks": callbacks,
    }
    if not config.precompute_ref_logps:
        return DPOTrainer(train_dataset=dataset, **common)
    cache_file = reference_cache_file(config, digest, cache_dir or Path(args.output_dir))
    dataset = with_reference_logps(dataset, model, processor, config, cache_file, args.device)
    collator = VisionPreferenceWithRefCollator(processor=processor, max_length=config.max_length)
    return PrecomputedRefDPOTrainer(train_dataset=dataset, data_collator=collator, **common)


def save_artifact(trainer: DPOTrainer, config: DpoJobConfig, artifact_dir: Path) -> ArtifactKind:
    """Called on every process of a multi-GPU run (``save_model`` gathers); the first one writes."""
    main_process = trainer.is_world_process_zero()
    if config.use_lora and config.merge_adapter:
        if main_process:
            trainer.model.merge_and_unload().save_pretrained(artifact_dir)
        kind: ArtifactKind = "merged"
    else:
        trainer.save_model(str(artifact_dir))
        kind = "adapter" if config.use_lora else "full"
    if main_process:
        trainer.processing_class.save_pretrained(artifact_dir)
    return kind


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written. The Trainer writes ``trainer_state.json``
    after the weights, optimizer, scheduler and RNG state, so a process killed mid-save leaves a
    folder without a readable one, and resuming from it would fail on every restart."""
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.name.removeprefix("checkpoint-").isdigit()),
        key=lambda p: int(p.name.removeprefix("checkpoint-")),
        reverse=True,
    )
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("skipping incomplete checkpoint %s", candidate)
            continue
        return str(candidate)
    return None


def train(
    pairs: list[PairRecord],
    config: DpoJobConfig,
    output_dir: Path,
    on_progress: ProgressCallback | None = None,
    *,
    cache_dir: Path | None = None,
) -> TrainOutcome:
    """Train (resuming from the last ``checkpoint-*`` in ``output_dir``) and save to ``output_dir/final``.

    ``cache_dir`` holds the reference log-prob cache (default ``output_dir``): a rerun on the same base
    model and data skips the reference pass.
    """
    output_dir = Path(output_dir)
    args = dpo_args(config, output_dir)
    pairs_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    callbacks = [ProgressReporter(on_progress, pairs_per_step)] if on_progress else None
    trainer = build_trainer(pairs, config, args, callbacks=callbacks, cache_dir=cache_dir)
    trainer.add_callback(RunFactsLogger(config.run_facts, trainer.callback_handler.callbacks))
    last_checkpoint = last_complete_checkpoint(output_dir)
    if last_checkpoint:
        log.info("resuming from %s", last_checkpoint)
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    artifact_dir = output_dir / "final"
    kind = save_artifact(trainer, config, artifact_dir)
    reward_metrics = next((log for log in reversed(trainer.state.log_history) if "loss" in log), {})
    return TrainOutcome(
        artifact_dir=artifact_dir,
        kind=kind,
        metrics={**reward_metrics, **result.metrics},
        steps=trainer.state.global_step,
    )
