"""Event models: the payload of every topic (see ``topics.py`` for which topic carries which).

Every model is frozen and forbids unknown fields, so a producer's typo is a contract error at the
consumer (and lands in the DLQ) instead of silently lost data. ``schema_version`` is checked on
decode; bump it only with a compatible reader.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.backends.base import SamplingParams


def utc_now() -> datetime:
    return datetime.now(UTC)


class Aspect(StrEnum):
    """The paper's three rating aspects, spelled as in the released VLFeedback dataset."""

    HELPFULNESS = "Helpfulness"
    VISUAL_FAITHFULNESS = "Visual Faithfulness"
    ETHICAL_CONSIDERATIONS = "Ethical Considerations"


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Contract):
    schema_version: Literal[1] = 1


# --- instructions -------------------------------------------------------------------------------


class Instruction(Event):
    """One multimodal instruction. Images live in the blob store; the event carries their URIs."""

    instruction_id: str = Field(min_length=8, max_length=128)
    prompt: str = Field(min_length=1, max_length=32_000)
    image_uris: list[str] = Field(default_factory=list, max_length=8, description="Blob URIs (sha256:<hex>).")
    models: list[str] = Field(
        default_factory=list,
        description="Model ids that must answer. Empty: every service derives the same k models "
        "from the registry by rendezvous hashing.",
    )
    samples_per_model: int = Field(1, ge=1, le=16)
    source: str = Field("", description="Dataset the instruction came from (e.g. LLaVA, SVIT).")
    reference: str | None = Field(None, description="Reference answer, when the source has one.")
    metadata: dict[str, str] = Field(default_factory=dict)
    submitted_at: datetime = Field(default_factory=utc_now)


# --- responses ----------------------------------------------------------------------------------


class Response(Event):
    """One model's answer to one instruction (the instruction travels along, so consumers need no join)."""

    response_id: str
    instruction: Instruction
    model_id: str
    sample_index: int = Field(0, ge=0)
    sampling: SamplingParams
    text: str
    status: Literal["answered", "empty", "refused"]
    finish_reason: str
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    latency_s: float = Field(0.0, ge=0)
    created_at: datetime = Field(default_factory=utc_now)

    @property
    def instruction_id(self) -> str:
        return self.instruction.instruction_id


# --- annotations --------------------------------------------------------------------------------


class AspectRating(Contract):
    rating: float | None = Field(
        description="1 (worst) to 5 (best); None when the judge wrote no number; a mean in swap mode."
    )
    raw: str = Field(description="The rating as the judge wrote it (kept for export).")
    rationale: str = ""

    @model_validator(mode="after")
    def _in_range(self) -> AspectRating:
        if self.rating is not None and not 1 <= self.rating <= 5:
            raise ValueError(f"rating must be 1..5 or None, got {self.rating}")
        return self


class RatedResponse(Contract):
    response_id: str
    model_id: str
    text: str
    shown_position: int = Field(ge=0, description="Where the judge saw this answer (position bias).")
    ratings: dict[Aspect, AspectRating]


class JudgeUsage(Contract):
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Annotation(Event):
    """One judge's ratings of every answer an instruction got (the paper's "all in one" call)."""

    annotation_id: str
    instruction: Instruction
    judge_id: str
    mode: Literal["all_in_one", "per_aspect", "verifiable"]
    rated: list[RatedResponse]
    missing_model_ids: list[str] = Field(
        default_factory=list, description="Assigned models that never answered."
    )
    self_agreement: float | None = Field(
        None, description="Swap mode: share of ratings equal in both orders."
    )
    usage: JudgeUsage = JudgeUsage()
    created_at: datetime = Field(default_factory=utc_now)

    @property
    def instruction_id(self) -> str:
        return self.instruction.instruction_id


# --- pairs --------------------------------------------------------------------------------------


class PairSide(Contract):
    response_id: str
    model_id: str
    text: str
    score: float


class Pair(Event):
    pair_id: str
    instruction_id: str
    prompt: str
    image_uris: list[str]
    chosen: PairSide
    rejected: PairSide
    margin: float = Field(ge=0)
    strategy: str
    judge_ids: list[str]
    split: Literal["train", "heldout"]
    created_at: datetime = Field(default_factory=utc_now)


# --- training -----------------------------------------------------------------------------------


class DatasetSelector(Contract):
    judge_ids: list[str] = Field(
        default_factory=list,
        description="Pairs made from exactly these judges' ratings (averaged when several); empty: "
        "pairs from every judge.",
    )
    strategy: str = "vlfeedback"
    min_margin: float = Field(0.0, ge=0)
    split: Literal["train", "heldout"] = "train"
    max_pairs: int | None = Field(None, ge=1)


class LoraSpec(Contract):
    r: int = Field(64, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)


class TrainHyperparams(Contract):
    """Defaults are the paper's recipe (Silkie: Qwen-VL-Chat, 8 GPUs)."""

    beta: float = Field(0.1, gt=0)
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    loss_weights: list[float] | None = None
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # the job's bound: 1.0 would be one warm-up step
    weight_decay: float = Field(0.05, ge=0)
    adam_beta2: float = Field(0.98, gt=0, lt=1)
    epochs: float = Field(3.0, gt=0)
    per_device_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(8, ge=1)
    bf16: bool = True
    gradient_checkpointing: bool = True
    max_steps: int | None = Field(None, ge=1)
    seed: int = 42


class TrainRequest(Event):
    job_id: str = Field(min_length=1, max_length=128)
    base_model: str = Field(description="Hub id or local path of an image-text-to-text model.")
    dataset: DatasetSelector = DatasetSelector()
    use_lora: bool = True
    lora: LoraSpec = LoraSpec()
    hparams: TrainHyperparams = TrainHyperparams()
    precompute_ref_logps: bool = True
    merge_adapter: bool = False
    requested_at: datetime = Field(default_factory=utc_now)


JobStatus = Literal["queued", "running", "completed", "failed"]


class TrainProgress(Event):
    job_id: str
    status: JobStatus
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    pairs_per_s: float | None = None
    eta_s: float | None = None
    error: str | None = None
    at: datetime = Field(default_factory=utc_now)


class Checkpoint(Event):
    checkpoint_id: str
    job_id: str
    base_model: str = Field(min_length=1)  # an adapter's base, and the model a checkpoint is compared with
    artifact_uri: str
    kind: Literal["adapter", "merged", "full"]
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utc_now)


# --- evaluation ---------------------------------------------------------------------------------


class ModelRef(Contract):
    """What to evaluate: a local/hub model (optionally with an adapter) or an OpenAI-compatible endpoint."""

    name: str = Field(description="Label in reports, e.g. 'base' or 'tuned'.")
    base_model: str = ""
    adapter_uri: str | None = None
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint serving `base_model`.")
    checkpoint_id: str | None = None

    @model_validator(mode="after")
    def _has_target(self) -> ModelRef:
        if not self.base_model:
            raise ValueError("model ref needs base_model (hub id, path, or the served model name)")
        return self


class EvalRequest(Event):
    eval_id: str = Field(min_length=1, max_length=128)
    model: ModelRef
    benchmarks: list[str] = Field(min_length=1)
    reference_model: str | None = Field(None, description="Base model for held-out preference accuracy.")
    requested_at: datetime = Field(default_factory=utc_now)


class EvalResult(Event):
    result_id: str
    eval_id: str
    model: ModelRef
    benchmark: str
    status: Literal["completed", "failed"]
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
