"""Preference pairs as the trainer receives them, and as TRL's vision DPO reads them."""

from __future__ import annotations

import hashlib
import io

from datasets import Dataset
from PIL import Image
from pydantic import BaseModel, ConfigDict


class PairRecord(BaseModel):
    """One preference pair: the same image(s) and prompt, a better and a worse answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pair_id: str
    prompt: str
    images: list[bytes]
    chosen: str
    rejected: str


def pair_row(pair: PairRecord) -> dict:
    """TRL's conversational vision preference row: image parts lead the user message."""
    image_parts = [{"type": "image", "text": None} for _ in pair.images]
    return {
        "pair_id": pair.pair_id,
        "prompt": [{"role": "user", "content": [*image_parts, {"type": "text", "text": pair.prompt}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
        "images": [Image.open(io.BytesIO(data)).convert("RGB") for data in pair.images],
    }


def preference_dataset(pairs: list[PairRecord]) -> Dataset:
    return Dataset.from_list([pair_row(pair) for pair in pairs])


def pairs_digest(pairs: list[PairRecord]) -> str:
    """A content hash of the pairs in order: the same data gives the same digest on any machine."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(str(len(pair.images)).encode())
        for field in (pair.prompt.encode(), *pair.images, pair.chosen.encode(), pair.rejected.encode()):
            digest.update(hashlib.sha256(field).digest())
    return digest.hexdigest()
