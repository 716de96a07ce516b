"""Event models: the payload of every topic (see ``topics.py`` for which topic carries which).

Every model is frozen and forbids unknown fields, so a producer's typo is a contract error at the
consumer (and lands in the DLQ) instead of silently lost data. ``schema_version`` is checked on
decode; bump it only with a compatible reader.

Anyone who can write to a topic chooses every field, so the contracts also refuse what would hurt a
consumer further on: ids that would become paths (``SafeId``), strings longer than the ledger column
they land in (``LedgerKey`` and the ``max_length`` bounds), and NaN or infinite floats (which JSON
cannot carry and would reach the next consumer as ``null``). No event says where a request or an API
key goes: endpoints and keys come only from the operator's registry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- bounded strings ----------------------------------------------------------------------------

LEDGER_KEY_CHARS = 128  # the ledger's String(128) id columns
LEDGER_NAME_CHARS = 64  # its String(64) columns (pair strategy, benchmark)
SAFE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

# An id the ledger keys a row by: longer would fail the insert on PostgreSQL (an unclassified crash).
LedgerKey = Annotated[str, StringConstraints(min_length=1, max_length=LEDGER_KEY_CHARS)]
# An id that names a file or folder, a Kubernetes object or a consumer group (jobs, evals, registry
# entries): lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63
# characters (a Kubernetes label value). It can never be absolute, '..', or hold a path separator.
SafeId = Annotated[str, StringConstraints(pattern=SAFE_ID_PATTERN, max_length=63)]


class Aspect(StrEnum):
    """The paper's three rating aspects, spelled as in the released VLFeedback dataset."""

    HELPFULNESS = "Helpfulness"
    VISUAL_FAITHFULNESS = "Visual Faithfulness"
    ETHICAL_CONSIDERATIONS = "Ethical Considerations"


class Contract(BaseModel):
    # allow_inf_nan=False: NaN and inf are refused where they are made, not re-encoded as null.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Event(Contract):
    schema_version: Literal[1] = 1


class SamplingParams(Contract):
    """How to sample one answer (defaults: greedy and short): part of a ``Response`` and of the registry,
    and what every backend takes."""

    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = Field(None, description="Per-request seed, where the backend supports it.")


# --- instructions -------------------------------------------------------------------------------


class Instruction(Event):
    """One multimodal instruction. Images live in the blob store; the event carries their URIs."""

    instruction_id: str = Field(min_length=8, max_length=LEDGER_KEY_CHARS)
    prompt: str = Field(min_length=1, max_length=32_000)
    image_uris: list[str] = Field(default_factory=list, max_length=8, description="Blob URIs (sha256:<hex>).")
    models: list[str] = Field(
        default_factory=list,
        description="Model ids that must answer. Empty: every service derives the same k models "
        "from the registry by rendezvous hashing.",
    )
    samples_per_model: int = Field(1, ge=1, le=16)
    source: str = Field(
        "", max_length=LEDGER_KEY_CHARS, description="Dataset the instruction came from (e.g. LLaVA, SVIT)."
    )
    reference: str | None = Field(None, description="Reference answer, when the source has one.")
    metadata: dict[str, str] = Field(default_factory=dict)
    submitted_at: datetime = Field(default_factory=utc_now)


# --- responses ----------------------------------------------------------------------------------


class Response(Event):
    """One model's answer to one instruction (the instruction travels along, so consumers need no join)."""

    response_id: LedgerKey
    instruction: Instruction
    model_id: LedgerKey
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
    cached_prompt_tokens: int = Field(0, description="Of prompt_tokens, those the provider's cache served.")
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Annotation(Event):
    """One judge's ratings of every answer an instruction got (the paper's "all in one" call)."""

    annotation_id: LedgerKey
    instruction: Instruction
    judge_id: LedgerKey
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
    pair_id: LedgerKey
    instruction_id: LedgerKey
    prompt: str
    image_uris: list[str]
    chosen: PairSide
    rejected: PairSide
    margin: float = Field(ge=0)
    strategy: str = Field(max_length=LEDGER_NAME_CHARS)
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
    strategy: str = Field("vlfeedback", max_length=LEDGER_NAME_CHARS)
    min_margin: float = Field(0.0, ge=0)
    split: Literal["train", "heldout"] = "train"
    max_pairs: int | None = Field(None, ge=1)


class LoraSpec(Contract):
    """PEFT ``LoraConfig`` names; defaults are the paper's. The earlier names (``alpha``,
    ``dropout``) are still read, so stored job requests stay valid."""

    r: int = Field(64, ge=1)
    lora_alpha: int = Field(16, ge=1, validation_alias=AliasChoices("lora_alpha", "alpha"))
    lora_dropout: float = Field(0.05, ge=0, lt=1, validation_alias=AliasChoices("lora_dropout", "dropout"))


class TrainHyperparams(Contract):
    """TRL ``DPOConfig`` names, passed to it as they are; defaults are the paper's recipe (Silkie:
    Qwen-VL-Chat, 8 GPUs). The earlier names (``epochs``, ``per_device_batch_size``) are still read,
    so stored job requests stay valid."""

    beta: float = Field(0.1, gt=0)
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    loss_weights: list[float] | None = None
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # the job's bound: 1.0 would be one warm-up step
    weight_decay: float = Field(0.05, ge=0)
    adam_beta2: float = Field(0.98, gt=0, lt=1)
    num_train_epochs: float = Field(3.0, gt=0, validation_alias=AliasChoices("num_train_epochs", "epochs"))
    per_device_train_batch_size: int = Field(
        2, ge=1, validation_alias=AliasChoices("per_device_train_batch_size", "per_device_batch_size")
    )
    gradient_accumulation_steps: int = Field(8, ge=1)
    bf16: bool | None = Field(
        None, description="None: bf16 exactly when a GPU trains (the paper's bf16); False: fp32."
    )
    gradient_checkpointing: bool = True
    max_steps: int | None = Field(None, ge=1, description="Overrides num_train_epochs when set.")
    seed: int = 42


class TrainRequest(Event):
    job_id: SafeId = Field(description="Names the job's checkpoint folder, log file and Kubernetes Job.")
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
    job_id: SafeId
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
    checkpoint_id: LedgerKey
    job_id: SafeId
    base_model: str = Field(min_length=1)  # an adapter's base, and the model a checkpoint is compared with
    artifact_uri: str
    kind: Literal["adapter", "merged", "full"]
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utc_now)


# --- evaluation ---------------------------------------------------------------------------------


class ModelRef(Contract):
    """What to evaluate: a local/hub model (optionally with an adapter) or a model of the registry.

    A served model is named by its registry id, never by a URL: the evaluator sends its API key to
    the endpoint the operator configured for that id, so no event can send the key elsewhere.
    """

    name: str = Field(description="Label in reports, e.g. 'base' or 'tuned'.")
    base_model: str = ""
    adapter_uri: str | None = None
    endpoint_id: SafeId | None = Field(
        None,
        description="Id of the registry model that answers (its endpoint and key are the registry's); "
        "None: load `base_model` locally.",
    )
    checkpoint_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_null_base_url(cls, data: object) -> object:
        """Ledgers written before ``endpoint_id`` hold ``"base_url": null`` for every local model;
        they stay readable. A URL in that field is still refused (extra field) like any other."""
        if isinstance(data, dict) and "base_url" in data and data["base_url"] is None:
            return {k: v for k, v in data.items() if k != "base_url"}
        return data

    @model_validator(mode="after")
    def _has_target(self) -> ModelRef:
        if not self.base_model:
            raise ValueError("model ref needs base_model (hub id, path, or the served model name)")
        return self


class EvalRequest(Event):
    eval_id: SafeId = Field(description="Names the job's log and answer files and its ledger job.")
    model: ModelRef
    benchmarks: list[str] = Field(min_length=1)
    reference_model: str | None = Field(None, description="Base model for held-out preference accuracy.")
    requested_at: datetime = Field(default_factory=utc_now)


class EvalResult(Event):
    result_id: LedgerKey
    eval_id: SafeId
    model: ModelRef
    benchmark: str = Field(max_length=LEDGER_NAME_CHARS)
    status: Literal["completed", "failed"]
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, JsonValue] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
