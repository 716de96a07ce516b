"""Instruction -> this model's answers. Pure logic: the runtime owns Kafka, commits and the DLQ.

The handler is a coroutine on the service's event loop: the model call (HTTP on the same loop)
and the ledger calls (batched in the ledger's threads) are awaited, so a lane is a task, not a
thread (see ``AsyncLanePool``).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from shared.backends.base import Backend, ChatMessage, GenerationRequest, GenerationResult
from shared.blobs.images import ImagePolicy, validate_image
from shared.blobs.store import BlobStore, blob_url
from shared.contracts import events as ev
from shared.contracts.events import SamplingParams
from shared.contracts.ids import response_id
from shared.ledger.async_ledger import AsyncLedger
from shared.registry import ModelEntry, Registry, assigned_models


@dataclass(frozen=True)
class SamplerContext:
    model: ModelEntry
    registry: Registry
    backend: Backend
    ledger: AsyncLedger
    blobs: BlobStore
    image_policy: ImagePolicy


def sample_seed(model: ModelEntry, instruction_id: str, index: int) -> int:
    """Per-sample seed: the entry's seed (or one derived from the instruction) plus the sample index,
    so n samples of one prompt differ and a rerun reproduces them."""
    derived = int(hashlib.sha256(instruction_id.encode()).hexdigest()[:8], 16) % 2**31
    base = model.sampling.seed if model.sampling.seed is not None else derived
    return base + index


def build_requests(
    event: ev.Instruction, model: ModelEntry, indices: list[int], images: list[bytes], image_urls: list[str]
) -> list[GenerationRequest]:
    """One request per sample index."""
    messages = [ChatMessage(role="system", text=model.system_prompt)] if model.system_prompt else []
    messages.append(ChatMessage(role="user", text=event.prompt))
    return [
        GenerationRequest(
            messages=messages,
            images=images,
            image_urls=image_urls,
            params=model.sampling.model_copy(update={"seed": sample_seed(model, event.instruction_id, i)}),
        )
        for i in indices
    ]


def response_status(result: GenerationResult) -> str:
    if result.finish_reason == "content_filter":
        return "refused"
    return "answered" if result.text.strip() else "empty"


def to_response(
    event: ev.Instruction, model_id: str, index: int, params: SamplingParams, result: GenerationResult
) -> ev.Response:
    sampling = params.model_dump()
    return ev.Response(
        response_id=response_id(event.instruction_id, model_id, sampling, index),
        instruction=event,
        model_id=model_id,
        sample_index=index,
        sampling=params,
        text=result.text,
        status=response_status(result),
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_s=result.latency_s,
    )


def load_images(uris: list[str], blobs: BlobStore, policy: ImagePolicy) -> list[bytes]:
    """The instruction's images, each checked against the policy (raises on a missing or bad one)."""
    images = [blobs.get(uri) for uri in uris]
    for image in images:
        validate_image(image, policy)
    return images


def image_urls(uris: list[str], blobs: BlobStore, base_url: str) -> list[str]:
    """The instruction's images as URLs the model server fetches, each checked to be stored (a
    missing one goes to the DLQ here, with its URI, rather than fail at the server)."""
    for uri in uris:
        blobs.require(uri)
    return [blob_url(uri, base_url) for uri in uris]


async def handle_instruction(event: ev.Instruction, ctx: SamplerContext) -> list[ev.Response]:
    """Answer an instruction assigned to this model. Samples already in the ledger are re-published
    as they are and only the missing ones are asked for: a redelivery after a crash never calls the
    model again, and an instruction sent again with more samples pays only for the new ones."""
    if ctx.model.id not in assigned_models(event.models, ctx.registry, event.instruction_id):
        return []
    stored = {
        r.sample_index: r
        for r in await ctx.ledger.responses_for(event.instruction_id)
        if r.model_id == ctx.model.id and r.sample_index < event.samples_per_model
    }
    missing = [i for i in range(event.samples_per_model) if i not in stored]
    if not missing:
        return [stored[i] for i in sorted(stored)]
    images: list[bytes] = []
    urls: list[str] = []
    # Blob reads may go over the network and decoding takes CPU: not on the loop.
    if event.image_uris and ctx.model.image_url_base:
        urls = await asyncio.to_thread(image_urls, event.image_uris, ctx.blobs, ctx.model.image_url_base)
    elif event.image_uris:
        images = await asyncio.to_thread(load_images, event.image_uris, ctx.blobs, ctx.image_policy)
    requests = build_requests(event, ctx.model, missing, images, urls)
    results = await ctx.backend.agenerate(requests)
    answered = [
        to_response(event, ctx.model.id, i, req.params, res)
        for i, req, res in zip(missing, requests, results, strict=True)
    ]
    await ctx.ledger.record(event, *answered)  # committed before the runtime publishes them
    return sorted([*stored.values(), *answered], key=lambda r: r.sample_index)
