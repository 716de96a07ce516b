"""RLAIF-V's preference layout into the ledger: each row is already a pair, with no ratings.

A row (``image, question, chosen, rejected, ds_name, origin_dataset, origin_split, idx,
image_path``) becomes an Instruction, its two answers Responses, and a Pair of strategy
``rlaif-v`` made by judge ``rlaif-v`` (scores 1 and 0, margin 1), split as the pair builder splits
(by a hash of the instruction id), so ``vlf train --strategy rlaif-v`` trains on it and ``vlf
export trl --strategy rlaif-v`` exports it. Ids come from the row's content, so a re-run adds
nothing.
"""

from __future__ import annotations

from typing import Any

from services.pair_builder.split import split_of
from shared.contracts import events as ev
from shared.contracts.events import SamplingParams
from shared.contracts.ids import instruction_id, pair_id, stable_hash

RLAIF_V_STRATEGY = "rlaif-v"
RLAIF_V_JUDGE = "rlaif-v"
CHOSEN_MODEL, REJECTED_MODEL = "rlaif-v-chosen", "rlaif-v-rejected"
ROW_KEYS = ("question", "chosen", "rejected")
SOURCE_KEYS = ("ds_name", "origin_dataset", "origin_split", "idx")


def is_rlaif_v_row(record: dict[str, Any]) -> bool:
    return all(key in record for key in ROW_KEYS) and "completions" not in record


def rlaif_v_facts(
    record: dict[str, Any], image_uris: list[str], image_sha256: str, heldout_fraction: float, seed: int
) -> list[ev.Event]:
    """The Instruction, two Responses and the Pair one RLAIF-V row holds (pure)."""
    instruction = ev.Instruction(
        instruction_id=instruction_id([image_sha256] if image_sha256 else [], str(record["question"])),
        prompt=str(record["question"]),
        image_uris=image_uris,
        models=[CHOSEN_MODEL, REJECTED_MODEL],
        metadata={key: str(record[key]) for key in SOURCE_KEYS if record.get(key) is not None},
    )
    sampling = SamplingParams()
    chosen, rejected = (
        ev.Response(
            # a prompt has several rows with different answers: the id comes from the text
            response_id=stable_hash("rlaif-v-response", instruction.instruction_id, model_id, text),
            instruction=instruction,
            model_id=model_id,
            sample_index=0,
            sampling=sampling,
            text=text,
            status="answered" if text.strip() else "empty",
            finish_reason="unknown",
        )
        for model_id, text in (
            (CHOSEN_MODEL, str(record["chosen"])),
            (REJECTED_MODEL, str(record["rejected"])),
        )
    )
    pair = ev.Pair(
        pair_id=pair_id(
            instruction.instruction_id, chosen.response_id, rejected.response_id, RLAIF_V_STRATEGY
        ),
        instruction_id=instruction.instruction_id,
        prompt=instruction.prompt,
        image_uris=image_uris,
        chosen=ev.PairSide(
            response_id=chosen.response_id, model_id=CHOSEN_MODEL, text=chosen.text, score=1.0
        ),
        rejected=ev.PairSide(
            response_id=rejected.response_id, model_id=REJECTED_MODEL, text=rejected.text, score=0.0
        ),
        margin=1.0,
        strategy=RLAIF_V_STRATEGY,
        judge_ids=[RLAIF_V_JUDGE],
        split=split_of(instruction.instruction_id, heldout_fraction, seed),
    )
    return [instruction, chosen, rejected, pair]
