"""The backend interface shared by sampler, annotator and evaluator."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts.events import SamplingParams


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    text: str


class GenerationRequest(BaseModel):
    """Images go with the first user message; ``response_format`` asks for JSON (structured output)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: list[ChatMessage]
    images: list[bytes] = Field(default_factory=list, description="Encoded image files (PNG/JPEG).")
    image_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of the images, which the model server fetches itself (HTTP and vLLM "
        "backends); instead of ``images``, never with them.",
    )
    params: SamplingParams = SamplingParams()
    response_format: dict | None = Field(None, description="A JSON schema the reply must follow.")

    @model_validator(mode="after")
    def _images_one_way(self) -> GenerationRequest:
        if self.images and self.image_urls:
            raise ValueError("a request carries its images as bytes or as URLs, not both")
        return self


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    finish_reason: str
    # Bounded as in the Response event, so a server's nonsense fails here, as a backend error.
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    cached_prompt_tokens: int = Field(0, ge=0, description="Prompt tokens the server's prefix cache served.")
    latency_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _cached_within_prompt(self) -> GenerationResult:
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError(
                f"cached_prompt_tokens {self.cached_prompt_tokens} > prompt_tokens {self.prompt_tokens}"
            )
        return self


class Backend(Protocol):
    """Answers batches of requests; results are returned in request order.

    Raises ``shared.backends.errors.TransientBackendError`` once its own retries are spent and
    ``PermanentBackendError`` (or ``ContextLengthError``) for requests that can never succeed.
    """

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    async def agenerate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """``generate`` for coroutines on the service's event loop (the sampler's async handler)."""
        ...

    def check(self) -> None:
        """Raise if the backend cannot serve right now (used by ``/readyz``)."""
        ...

    def close(self) -> None: ...
