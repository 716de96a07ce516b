"""Select preference pairs from the ledger for a training or evaluation job."""

from __future__ import annotations

from services.trainer.preference_data import PairRecord
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger


def select_pairs(ledger: Ledger, selector: ev.DatasetSelector) -> list[ev.Pair]:
    """Pairs of the selector's split and strategy, from the chosen judges, at or above its margin."""
    judges = set(selector.judge_ids)
    chosen = []
    for pair in ledger.iter_facts(ev.Pair, split=selector.split, strategy=selector.strategy):
        if pair.margin < selector.min_margin:
            continue
        if judges and not judges.issuperset(pair.judge_ids):
            continue
        chosen.append(pair)
        if selector.max_pairs and len(chosen) >= selector.max_pairs:
            break
    return chosen


def pair_records(pairs: list[ev.Pair], blobs: BlobStore) -> list[PairRecord]:
    """Pairs with their images loaded from the blob store, as the DPO code takes them."""
    return [
        PairRecord(
            pair_id=p.pair_id,
            prompt=p.prompt,
            images=[blobs.get(uri) for uri in p.image_uris],
            chosen=p.chosen.text,
            rejected=p.rejected.text,
        )
        for p in pairs
    ]
