"""Select preference pairs from the ledger for a training or evaluation job."""

from __future__ import annotations

from datetime import datetime

from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.ml.preference_data import PairRecord


def select_pairs(
    ledger: Ledger, selector: ev.DatasetSelector, created_before: datetime | None = None
) -> list[ev.Pair]:
    """Pairs of the selector's split and strategy, at or above its margin, made from exactly the
    judges it names (any, when it names none), as ``vlf export trl`` selects them.

    ``created_before`` (a job's request time) pins the set: the pair builder keeps adding pairs, and
    every attempt of a job (a restart resumes from its checkpoint) and every rank of a distributed
    run must see the same dataset, or the resumed epoch and the cached reference log-probs no longer
    line up with it."""
    judges = sorted(selector.judge_ids)
    chosen = []
    for pair in ledger.iter_facts(ev.Pair, split=selector.split, strategy=selector.strategy):
        if created_before is not None and pair.created_at > created_before:
            break  # oldest first: every later one is newer still
        if pair.margin < selector.min_margin:
            continue
        if judges and sorted(pair.judge_ids) != judges:
            continue
        chosen.append(pair)
        if selector.max_pairs and len(chosen) >= selector.max_pairs:
            break
    return chosen


def pair_records(pairs: list[ev.Pair], blobs: BlobStore) -> list[PairRecord]:
    """Pairs with their images loaded from the blob store, as the DPO code takes them. Each image is
    read once and shared by every pair that shows it (an instruction's answers make up to 6 pairs)."""
    images: dict[str, bytes] = {}

    def image(uri: str) -> bytes:
        if uri not in images:
            images[uri] = blobs.get(uri)
        return images[uri]

    return [
        PairRecord(
            pair_id=p.pair_id,
            prompt=p.prompt,
            images=[image(uri) for uri in p.image_uris],
            chosen=p.chosen.text,
            rejected=p.rejected.text,
        )
        for p in pairs
    ]
