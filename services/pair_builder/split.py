"""Held-out split by instruction: every pair of an instruction lands on the same side.

The side is a pure function of (seed, instruction id) through sha256, not Python's ``hash()``
(salted per process), so every replica, restart and rerun agrees, and an instruction's pairs can
never leak from training into the held-out set. Default: the paper's 0.5% with seed 42.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "heldout"]

_UNIT = 2**64


def split_of(instruction_id: str, heldout_fraction: float = 0.005, seed: int = 42) -> Split:
    """``heldout`` for about ``heldout_fraction`` of instruction ids, chosen by hash; else ``train``."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be within [0, 1], got {heldout_fraction}")
    digest = hashlib.sha256(f"{seed}\x1f{instruction_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / _UNIT
    return "heldout" if position < heldout_fraction else "train"
