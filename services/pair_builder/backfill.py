"""Pairs for annotations that reached the ledger without passing through the pair builder service
(``vlf import`` of the released VLFeedback data writes to the ledger and publishes nothing).

The same rule, judges and held-out split as the service (``PairBuilderSettings``), and the same
deterministic pair ids, so a re-run, or the service meeting the same annotations later, adds nothing.
"""

from __future__ import annotations

from services.pair_builder.settings import PairBuilderSettings
from services.pair_builder.stats import pair_outcomes
from shared.contracts import events as ev
from shared.ledger import Ledger

WRITE_BATCH = 1000


def backfill_pairs(ledger: Ledger, settings: PairBuilderSettings) -> int:
    """Write the pairs the rule makes of every annotation in the ledger; returns how many were new."""
    new = 0
    pending: list[ev.Pair] = []
    for outcome in pair_outcomes(ledger, settings.rule(), settings.heldout_fraction, settings.seed):
        pending.extend(outcome.pairs)
        if len(pending) >= WRITE_BATCH:
            new += ledger.record(*pending)
            pending = []
    if pending:
        new += ledger.record(*pending)
    return new
