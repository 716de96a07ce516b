"""The model and judge registry (a YAML file), and which models answer which instruction.

A new LVLM or judge is one more entry here plus one more consumer process; no code changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts.events import SAFE_ID_PATTERN, SamplingParams

BackendKind = Literal["openai", "transformers", "vllm"]


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=SAFE_ID_PATTERN, description="Also names the consumer group.")
    backend: BackendKind
    model: str = Field(description="Served model name, hub id or local path.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (backend: openai).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    api_key_file: str | None = Field(None, description="Mounted secret file holding the API key.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once (HTTP) or batch size.")
    timeout_s: float = Field(120.0, gt=0)
    price_per_1k_input: float = Field(0.0, ge=0, description="USD per 1k prompt tokens.")
    price_per_1k_output: float = Field(0.0, ge=0, description="USD per 1k completion tokens.")

    @model_validator(mode="after")
    def _openai_needs_url_or_key(self) -> _Entry:
        if self.backend == "openai" and not (self.base_url or self.api_key_env or self.api_key_file):
            raise ValueError(
                f"{self.id}: backend openai needs base_url or an API key (api_key_env/api_key_file)"
            )
        return self

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_per_1k_input + completion_tokens * self.price_per_1k_output) / 1000


class ModelEntry(_Entry):
    """An LVLM that answers instructions."""

    sampling: SamplingParams = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=512)
    system_prompt: str | None = None
    chat_template: str | None = Field(
        None,
        description="Path of a Jinja chat template overriding the model's. In-process backends apply it; "
        "the HTTP backend sends it as the request's chat_template (vLLM's extension of the API).",
    )
    image_url_base: str | None = Field(
        None,
        description="Where the blob store's root is served over http(s) (a bucket's public or CDN address): "
        "images are then sent as URLs under it, which the model server fetches itself (vLLM: "
        "--allowed-media-domains), instead of base64 in every request. HTTP and vLLM backends only.",
    )

    @model_validator(mode="after")
    def _image_urls_need_a_fetching_backend(self) -> ModelEntry:
        if self.image_url_base is None:
            return self
        if not self.image_url_base.startswith(("http://", "https://")):
            raise ValueError(
                f"model {self.id}: image_url_base must be an http(s) URL, got {self.image_url_base!r}"
            )
        if self.backend == "transformers":
            raise ValueError(
                f"model {self.id}: the transformers backend takes image bytes, not image_url_base"
            )
        return self

    def read_chat_template(self) -> str | None:
        """The override's text, read when the backend is built (a sampler needs only its own)."""
        if self.chat_template is None:
            return None
        path = Path(self.chat_template)
        if not path.is_file():
            raise ValueError(f"model {self.id}: chat_template {path} is not a file")
        return path.read_text(encoding="utf-8")


class JudgeEntry(BaseModel):
    """An AI judge (any OpenAI-compatible model) or the rule-based verifiable judge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=SAFE_ID_PATTERN)
    kind: Literal["ai", "verifiable"] = "ai"
    backend: BackendKind = "openai"
    model: str = ""
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(300.0, gt=0)
    mode: Literal["all_in_one", "per_aspect"] = "all_in_one"
    structured_output: bool = Field(False, description="Ask for JSON via response_format json_schema.")
    swap: bool = Field(False, description="Rate again in reverse order; report self-agreement.")
    max_tokens: int = Field(2048, ge=1)
    prompt_template: str | None = Field(None, description="File with a user-supplied judge prompt template.")
    price_per_1k_input: float = Field(0.0, ge=0)
    price_per_1k_cached_input: float | None = Field(
        None,
        ge=0,
        description="USD per 1k prompt tokens the provider served from its prompt cache "
        "(usage.prompt_tokens_details.cached_tokens); unset: the full input price.",
    )
    price_per_1k_output: float = Field(0.0, ge=0)
    batch: bool = Field(
        False,
        description="Rate through the provider's Batch API (OpenAI /v1/files + /v1/batches): results "
        "within its 24-hour window, at batch_price_ratio of the live price.",
    )
    batch_price_ratio: float = Field(
        0.5, gt=0, le=1, description="Batch price as a share of the live one (OpenAI: half)."
    )

    @model_validator(mode="after")
    def _ai_needs_model(self) -> JudgeEntry:
        if self.kind == "ai" and not self.model:
            raise ValueError(f"judge {self.id}: kind ai needs a model")
        if self.batch and (self.kind != "ai" or self.backend != "openai"):
            raise ValueError(
                f"judge {self.id}: batch needs kind ai and backend openai (a server with the Batch API)"
            )
        return self

    def call_cost(
        self, prompt_tokens: int, cached_prompt_tokens: int, completion_tokens: int, batch: bool = False
    ) -> CallCost:
        """A call's price, split as providers bill it: cached prompt tokens are part of the prompt
        tokens and are charged at the cached rate instead of the full one; a batch call costs
        ``batch_price_ratio`` of each part."""
        cached_price = self.price_per_1k_cached_input
        if cached_price is None:
            cached_price = self.price_per_1k_input
        ratio = self.batch_price_ratio if batch else 1.0
        return CallCost(
            input_usd=(prompt_tokens - cached_prompt_tokens) * self.price_per_1k_input * ratio / 1000,
            cached_input_usd=cached_prompt_tokens * cached_price * ratio / 1000,
            output_usd=completion_tokens * self.price_per_1k_output * ratio / 1000,
        )


class CallCost(BaseModel):
    """What one judge call cost, per billed part."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_usd: float = Field(ge=0, description="Prompt tokens at the full input price.")
    cached_input_usd: float = Field(ge=0, description="Prompt tokens served from the provider's cache.")
    output_usd: float = Field(ge=0)

    @property
    def total_usd(self) -> float:
        return self.input_usd + self.cached_input_usd + self.output_usd


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[ModelEntry] = Field(default_factory=list)
    judges: list[JudgeEntry] = Field(default_factory=list)
    models_per_instruction: int = Field(
        4, ge=1, description="k: how many models answer an instruction (paper: 4)."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> Registry:
        for kind, entries in (("model", self.models), ("judge", self.judges)):
            ids = [e.id for e in entries]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} ids in registry: {dupes}")
        return self

    @classmethod
    def load(cls, path: Path) -> Registry:
        if not path.exists():
            raise FileNotFoundError(f"registry file {path} not found (set VLF_REGISTRY_PATH)")
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})

    def model(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise KeyError(f"model {model_id!r} is not in the registry; known: {[m.id for m in self.models]}")

    def judge(self, judge_id: str) -> JudgeEntry:
        for entry in self.judges:
            if entry.id == judge_id:
                return entry
        raise KeyError(f"judge {judge_id!r} is not in the registry; known: {[j.id for j in self.judges]}")

    def assign(self, instruction_id: str, k: int | None = None) -> list[str]:
        """The k models that answer an instruction, by rendezvous hashing: adding a model only moves
        instructions onto it, so a new sampler never changes who answers the rest."""
        k = k or self.models_per_instruction
        scored = sorted(self.models, key=lambda m: _rendezvous(instruction_id, m.id), reverse=True)
        return sorted(m.id for m in scored[:k])


def _rendezvous(instruction_id: str, model_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{instruction_id}\x00{model_id}".encode()).digest()[:8], "big")


def assigned_models(instruction_models: list[str], registry: Registry, instruction_id: str) -> list[str]:
    """The instruction's own list when it names models, else the registry's deterministic choice."""
    return sorted(instruction_models) if instruction_models else registry.assign(instruction_id)
