"""In-process vLLM (GPU extra): batched chat generation through ``vllm.LLM.chat``.

Imported only when a registry entry asks for ``backend: vllm``; the ``gpu`` extra installs vLLM.
Concurrent calls (the sampler's and the annotator's lanes) share one ``LLM.chat`` call
(``shared.backends.coalesce``); per-request seeds keep each sampled answer independent of its
batch-mates.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from shared.backends.base import GenerationRequest, GenerationResult
from shared.backends.coalesce import CoalescingBackend
from shared.backends.errors import ContextLengthError, PermanentBackendError
from shared.backends.metrics import BackendMetrics, record_batch
from shared.backends.openai_http import build_messages


class VllmBackend(CoalescingBackend):
    def __init__(
        self,
        model: str,
        *,
        chat_template: str | None = None,
        registry: CollectorRegistry | None = None,
        **engine_args: object,
    ) -> None:
        from vllm import LLM

        self._llm = LLM(model=model, limit_mm_per_prompt={"image": 8}, **engine_args)
        self._max_len = self._llm.llm_engine.model_config.max_model_len
        self._chat_template = chat_template  # None: the model's own
        self._generating = threading.Lock()  # ``LLM`` is not thread-safe: one batch at a time
        self._metrics = BackendMetrics(model, registry)
        super().__init__("vllm-batches")

    def _generate(
        self, requests: list[GenerationRequest], *, count_failures: bool = True
    ) -> list[GenerationResult]:
        from vllm import SamplingParams as VllmSampling

        started = time.monotonic()
        conversations = [build_messages(r) for r in requests]
        params = [
            VllmSampling(
                temperature=r.params.temperature,
                top_p=r.params.top_p,
                max_tokens=r.params.max_tokens,
                seed=r.params.seed,
            )
            for r in requests
        ]
        with record_batch(self._metrics, len(requests), count_failures=count_failures):
            try:
                with self._generating:
                    outputs = self._llm.chat(
                        conversations, params, chat_template=self._chat_template, use_tqdm=False
                    )
            except ValueError as exc:
                if "longer than the maximum model length" in str(exc) or "max_model_len" in str(exc):
                    raise ContextLengthError(str(exc)) from exc
                raise PermanentBackendError(str(exc)) from exc
        latency = time.monotonic() - started
        results = [
            GenerationResult(
                text=out.outputs[0].text,
                finish_reason=out.outputs[0].finish_reason or "stop",
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(out.outputs[0].token_ids),
                cached_prompt_tokens=out.num_cached_tokens or 0,
                latency_s=latency,
            )
            for out in outputs
        ]
        for result in results:
            self._metrics.succeeded(result)
        return results

    def check(self) -> None:
        """In-process: ready once constructed."""

    def close(self) -> None:
        self._calls.close()
        del self._llm
