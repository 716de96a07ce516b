"""Preference pairs as the trainer receives them, and as TRL's vision DPO reads them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset
from pydantic import BaseModel, ConfigDict

ROW_FORMAT = "vision-preference-v1"  # in the cache key: change it when ``pair_row`` changes
_TEXT_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}
MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.List(_TEXT_PART)})
TRAINING_FEATURES = datasets.Features(
    {
        "pair_id": datasets.Value("string"),
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "images": datasets.List(datasets.Image()),
    }
)


class PairRecord(BaseModel):
    """One preference pair: the same image(s) and prompt, a better and a worse answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pair_id: str
    prompt: str
    images: list[bytes]
    chosen: str
    rejected: str


def preference_row(pair_id: str, prompt: str, images: list[bytes], chosen: str, rejected: str) -> dict:
    """TRL's conversational vision preference row: image parts lead the user message. Images stay
    encoded (``datasets.Image`` decodes them to PIL when a row is read). The trainer's rows and
    ``vlf export trl``'s are both made here."""
    image_parts = [{"type": "image", "text": None} for _ in images]
    return {
        "pair_id": pair_id,
        "prompt": [{"role": "user", "content": [*image_parts, {"type": "text", "text": prompt}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        "images": [{"bytes": data, "path": None} for data in images],
    }


def pair_row(pair: PairRecord) -> dict:
    return preference_row(pair.pair_id, pair.prompt, pair.images, pair.chosen, pair.rejected)


def preference_dataset(
    pairs: Sequence[PairRecord], cache_dir: Path | None = None, digest: str | None = None
) -> Dataset:
    """The pairs as an Arrow file (memory-mapped), written row by row with the images as they are
    stored. Building it in memory (``from_list``) held every pair's decoded image at once and
    re-encoded each as PNG: hundreds of GB and hours of CPU at the paper's 380k pairs. In
    ``cache_dir`` (by default the datasets cache) under the pairs' digest (``pairs_digest``, computed
    here unless given), so a resumed job reuses it."""
    return Dataset.from_generator(
        _rows,
        gen_kwargs={"pairs": pairs},
        features=TRAINING_FEATURES,
        cache_dir=str(cache_dir) if cache_dir else None,
        fingerprint=f"{ROW_FORMAT}-{digest or pairs_digest(pairs)}",
    )


def _rows(pairs: Sequence[PairRecord]):  # noqa: ANN202 - a generator for datasets
    for pair in pairs:
        yield pair_row(pair)


def pairs_digest(pairs: list[PairRecord]) -> str:
    """A content hash of the pairs in order: the same data gives the same digest on any machine."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(str(len(pair.images)).encode())
        for field in (pair.prompt.encode(), *pair.images, pair.chosen.encode(), pair.rejected.encode()):
            digest.update(hashlib.sha256(field).digest())
    return digest.hexdigest()
