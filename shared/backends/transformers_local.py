"""In-process backend on ``transformers``: any image-text-to-text model, on CPU or one GPU.

Used where no inference server is worth running: tests and the local demo with the tiny models of
``devkit.tinymodels``, small GPU jobs, and the evaluator scoring a freshly trained adapter.

Reproducibility: greedy requests (temperature 0) are deterministic. A sampled request with a
``seed`` runs alone, on a forked RNG set to its seed (a sampled answer depends on its batch-mates,
and the process-wide RNG stays untouched), so it is reproducible for the same model, device and
library versions whatever else is asked meanwhile. Greedy requests are batched with greedy requests
of the same parameters (their seeds do not matter), unseeded sampled ones with those of identical
parameters, in arrival order; concurrent calls share one batch (``shared.backends.coalesce``).
``response_format`` is not enforced (no constrained decoding here): callers validate the reply, as
they must with any backend.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from itertools import groupby

import torch
from PIL import Image
from prometheus_client import CollectorRegistry
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature

from shared.backends.base import GenerationRequest, GenerationResult
from shared.backends.coalesce import CoalescingBackend
from shared.backends.errors import ContextLengthError, PermanentBackendError, TransientBackendError
from shared.backends.metrics import BackendMetrics, record_batch
from shared.contracts.events import SamplingParams

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU and float32 on the CPU (bf16 matmuls are slow on most CPUs)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise PermanentBackendError(f"unknown dtype {dtype!r}; expected auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def decode_images(request: GenerationRequest) -> list[Image.Image]:
    if request.image_urls:
        raise PermanentBackendError("the transformers backend takes image bytes, not URLs (image_url_base)")
    try:
        return [Image.open(io.BytesIO(data)).convert("RGB") for data in request.images]
    except OSError as exc:
        raise PermanentBackendError(f"an image of the request cannot be decoded: {exc}") from exc


def chat_messages(request: GenerationRequest) -> list[dict]:
    """The request as chat-template messages, one image part per image in the first user message."""
    messages: list[dict] = []
    images_placed = False
    for message in request.messages:
        parts: list[dict] = []
        if message.role == "user" and not images_placed:
            parts = [{"type": "image"} for _ in request.images]
            images_placed = True
        parts.append({"type": "text", "text": message.text})
        messages.append({"role": message.role, "content": parts})
    if request.images and not images_placed:
        raise PermanentBackendError("the request has images but no user message to carry them")
    return messages


def batch_key(index: int, params: SamplingParams) -> object:
    """Requests with equal keys may share a batch: a greedy answer ignores the seed; a seeded
    sampled answer would depend on its batch-mates, so its key is its own."""
    if params.temperature == 0.0:
        return params.model_copy(update={"seed": None})
    return params if params.seed is None else index


def batches_by_params(
    requests: list[GenerationRequest], max_batch_size: int
) -> list[list[tuple[int, GenerationRequest]]]:
    """Consecutive runs of requests with equal ``batch_key``, cut at ``max_batch_size``."""
    batches: list[list[tuple[int, GenerationRequest]]] = []
    for _, run in groupby(enumerate(requests), key=lambda item: batch_key(item[0], item[1].params)):
        indexed = list(run)
        batches.extend(indexed[i : i + max_batch_size] for i in range(0, len(indexed), max_batch_size))
    return batches


def completion_length(tokens: list[int], eos_ids: set[int]) -> tuple[int, bool]:
    """Tokens up to and including the first EOS, and whether an EOS was produced."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return position + 1, True
    return len(tokens), False


def generation_kwargs(params: SamplingParams) -> dict:
    if params.temperature == 0.0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": None}


@dataclass(frozen=True)
class PreparedBatch:
    indices: list[int]
    params: SamplingParams
    inputs: BatchFeature


class TransformersBackend(CoalescingBackend):
    """Loads ``model_path`` (a local folder or hub id) once and answers batches greedily or sampled."""

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 8,
        adapter_path: str | None = None,
        chat_template: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        self.chat_template = chat_template  # None: the processor's own
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=self.dtype)
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.max_positions = self.model.config.get_text_config().max_position_embeddings
        self.eos_ids = self._eos_ids()
        self._generating = threading.Lock()
        self._metrics = BackendMetrics(model_path, registry)
        super().__init__("transformers-batches")

    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = {configured} if isinstance(configured, int) else set(configured or [])
        ids.add(self.processor.tokenizer.eos_token_id)
        return ids

    def _generate(
        self, requests: list[GenerationRequest], *, count_failures: bool = True
    ) -> list[GenerationResult]:
        """Every batch is prepared and length-checked before any is generated, so nothing is wasted.
        One call at a time: the batches of threads and of the loop's tasks would otherwise fight over
        the device and over the process-wide RNG a seeded batch forks."""
        with record_batch(self._metrics, len(requests), count_failures=count_failures), self._generating:
            prepared = [self._prepare(batch) for batch in batches_by_params(requests, self.max_batch_size)]
            results: dict[int, GenerationResult] = {}
            for batch in prepared:
                results.update(zip(batch.indices, self._generate_batch(batch), strict=True))
        ordered = [results[index] for index in range(len(requests))]
        for result in ordered:
            self._metrics.succeeded(result)
        return ordered

    def _prepare(self, batch: list[tuple[int, GenerationRequest]]) -> PreparedBatch:
        texts = [
            self.processor.apply_chat_template(
                chat_messages(request), chat_template=self.chat_template, add_generation_prompt=True
            )
            for _, request in batch
        ]
        images = [image for _, request in batch for image in decode_images(request)]
        try:
            inputs = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        except ValueError as exc:  # e.g. an image placeholder typed in the prompt, an image too narrow
            raise PermanentBackendError(f"the model's processor refused the request: {exc}") from exc
        for (index, _), length in zip(batch, inputs["attention_mask"].sum(dim=1).tolist(), strict=True):
            if length > self.max_positions:
                raise ContextLengthError(
                    f"request {index}: prompt of {length} tokens exceeds the model's "
                    f"{self.max_positions} positions"
                )
        return PreparedBatch(indices=[index for index, _ in batch], params=batch[0][1].params, inputs=inputs)

    def _generate_batch(self, batch: PreparedBatch) -> list[GenerationResult]:
        params = batch.params
        inputs = batch.inputs.to(self.device)
        started = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            # A seeded batch runs on a fork of the RNG, so it neither depends on nor changes the
            # process's stream; an unseeded one draws from that stream, so two of them differ.
            seeded = params.seed is not None
            with torch.random.fork_rng(devices=devices, enabled=seeded), torch.inference_mode():
                if seeded:
                    torch.manual_seed(params.seed)
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=params.max_tokens,
                    pad_token_id=self.processor.tokenizer.pad_token_id,
                    **generation_kwargs(params),
                )
        except torch.cuda.OutOfMemoryError as exc:
            raise TransientBackendError(f"GPU out of memory for a batch of {len(batch.indices)}") from exc
        latency = time.perf_counter() - started
        prompt_width = inputs["input_ids"].shape[1]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, prompt_tokens in zip(output[:, prompt_width:].tolist(), prompt_lengths, strict=True):
            length, stopped = completion_length(row, self.eos_ids)
            results.append(
                GenerationResult(
                    text=self.processor.tokenizer.decode(row[:length], skip_special_tokens=True),
                    finish_reason="stop" if stopped else "length",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=length,
                    latency_s=latency,
                )
            )
        return results

    def check(self) -> None:
        if self.model is None:
            raise TransientBackendError("the backend is closed")

    def close(self) -> None:
        self._calls.close()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
