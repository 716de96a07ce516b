"""Completion tokens/s of TransformersBackend on a tiny model: 8 requests one at a time, as one batch,
and as 8 concurrent ``agenerate`` calls (how the sampler's lanes call it: they share batches).

python bench/bench_transformers_backend.py [--family qwen2_vl] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from devkit.tinymodels import FAMILIES, build_tiny_vlm
from shared.backends.base import ChatMessage, GenerationRequest, GenerationResult
from shared.backends.transformers_local import TransformersBackend
from shared.contracts.events import SamplingParams


def requests(count: int, max_tokens: int) -> list[GenerationRequest]:
    def png(shade: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (96, 80), (shade, 40, 200)).save(buffer, format="PNG")
        return buffer.getvalue()

    return [
        GenerationRequest(
            messages=[ChatMessage(role="user", text=f"Describe image {i}: colour, shape and position.")],
            images=[png(20 * i)],
            params=SamplingParams(max_tokens=max_tokens),
        )
        for i in range(count)
    ]


async def concurrent_calls(
    backend: TransformersBackend, batch: list[GenerationRequest]
) -> list[GenerationResult]:
    answers = await asyncio.gather(*(backend.agenerate([request]) for request in batch))
    return [answer for (answer,) in answers]


def tokens_per_s(backend: TransformersBackend, batch: list[GenerationRequest], mode: str) -> float:
    started = time.perf_counter()
    if mode == "batch":
        results = backend.generate(batch)
    elif mode == "concurrent":
        results = asyncio.run(concurrent_calls(backend, batch))
    else:
        results = [backend.generate([request])[0] for request in batch]
    return sum(result.completion_tokens for result in results) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--max-tokens", type=int, default=32)
    cli = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        backend = TransformersBackend(str(build_tiny_vlm(cli.family, Path(scratch))), max_batch_size=8)
        batch = requests(8, cli.max_tokens)
        tokens_per_s(backend, batch[:2], "batch")  # warm-up
        one_at_a_time = tokens_per_s(backend, batch, "one_at_a_time")
        batched = tokens_per_s(backend, batch, "batch")
        concurrent = tokens_per_s(backend, batch, "concurrent")
        backend.close()
    print(f"{cli.family} on {backend.device}: one at a time {one_at_a_time:.1f} tokens/s, ", end="")
    print(f"batch of 8 {batched:.1f} tokens/s ({batched / one_at_a_time:.2f}x), ", end="")
    print(f"8 concurrent calls {concurrent:.1f} tokens/s ({concurrent / one_at_a_time:.2f}x)")


if __name__ == "__main__":
    main()
