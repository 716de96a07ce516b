"""Completion tokens/s of TransformersBackend on a tiny model: one batch of 8 vs 8 requests one at a time.

python bench/bench_transformers_backend.py [--family qwen2_vl] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from shared.backends.base import ChatMessage, GenerationRequest, SamplingParams
from shared.backends.transformers_local import TransformersBackend
from shared.tinymodels import FAMILIES, build_tiny_vlm


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


def tokens_per_s(backend: TransformersBackend, batch: list[GenerationRequest], batched: bool) -> float:
    started = time.perf_counter()
    results = backend.generate(batch) if batched else [backend.generate([r])[0] for r in batch]
    return sum(result.completion_tokens for result in results) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--max-tokens", type=int, default=32)
    cli = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        backend = TransformersBackend(str(build_tiny_vlm(cli.family, Path(scratch))), max_batch_size=8)
        batch = requests(8, cli.max_tokens)
        tokens_per_s(backend, batch[:2], batched=True)  # warm-up
        one_at_a_time = tokens_per_s(backend, batch, batched=False)
        batched = tokens_per_s(backend, batch, batched=True)
    print(f"{cli.family} on {backend.device}: one at a time {one_at_a_time:.1f} tokens/s, ", end="")
    print(f"batch of 8 {batched:.1f} tokens/s ({batched / one_at_a_time:.2f}x)")


if __name__ == "__main__":
    main()
