"""Build the backend a registry entry asks for. Heavy backends are imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from shared.backends.base import Backend
from shared.registry import JudgeEntry, ModelEntry
from shared.runtime.event_loop import LoopThread

if TYPE_CHECKING:
    from shared.backends.openai_batch import OpenAIBatchClient


def build_backend(
    entry: ModelEntry | JudgeEntry, loop: LoopThread | None = None, metrics: CollectorRegistry | None = None
) -> Backend:
    """``loop``: the service's event loop, which an HTTP backend then runs on (else its own);
    ``metrics``: the registry the service serves on /metrics, for the backend's series."""
    chat_template = entry.read_chat_template() if isinstance(entry, ModelEntry) else None
    match entry.backend:
        case "openai":
            from shared.backends.openai_http import OpenAIHttpBackend, resolve_api_key

            return OpenAIHttpBackend(
                model=entry.model,
                base_url=entry.base_url,
                api_key=resolve_api_key(entry.api_key_env, entry.api_key_file),
                concurrency=entry.concurrency,
                timeout_s=entry.timeout_s,
                chat_template=chat_template,
                registry=metrics,
                loop=loop,
            )
        case "transformers":
            from shared.backends.transformers_local import TransformersBackend

            return TransformersBackend(
                entry.model, max_batch_size=entry.concurrency, chat_template=chat_template, registry=metrics
            )
        case "vllm":
            from shared.backends.vllm_local import VllmBackend

            # No batch size: the sampler's lanes bound a batch, vLLM's scheduler bounds what runs at once.
            return VllmBackend(entry.model, chat_template=chat_template, registry=metrics)
    raise ValueError(f"unknown backend {entry.backend!r}")


def build_batch_client(judge: JudgeEntry) -> OpenAIBatchClient:
    """The Batch API client of a judge with ``batch: true`` (same server, key and model as its live calls)."""
    from shared.backends.openai_batch import OpenAIBatchClient
    from shared.backends.openai_http import resolve_api_key

    return OpenAIBatchClient(
        model=judge.model,
        base_url=judge.base_url,
        api_key=resolve_api_key(judge.api_key_env, judge.api_key_file),
        timeout_s=judge.timeout_s,
    )
