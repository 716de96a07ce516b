"""Held-out preference accuracy from DPO's implicit reward, for the evaluator.

DPO's policy defines a reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)); a trained model
"prefers" the chosen answer when r(chosen) > r(rejected). The share of held-out pairs where it does
is the standard sanity metric of a DPO run, computed here with the same log-prob code as training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from shared.ml.logps import completion_logps, fused_log_probs
from shared.ml.preference_data import PairRecord, preference_dataset


def implicit_reward_accuracy(
    policy: tuple[list[float], list[float]], reference: tuple[list[float], list[float]], beta: float
) -> float:
    """Share of pairs with beta*(policy - reference)(chosen) > the same for rejected; ties count as wrong."""
    (policy_chosen, policy_rejected), (ref_chosen, ref_rejected) = policy, reference
    wins = [
        beta * (pc - rc) > beta * (pr - rr)
        for pc, pr, rc, rr in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected, strict=True)
    ]
    return sum(wins) / len(wins)


def preference_accuracy(
    policy_path: str | Path,
    adapter_path: str | Path | None,
    reference_path: str | Path,
    pairs: list[PairRecord],
    beta: float,
    *,
    batch_size: int = 8,
    max_length: int | None = 2048,
) -> float:
    """Implicit-reward preference accuracy of a policy (base + optional LoRA adapter) against a reference.

    When the adapter sits on the reference model itself, the reference is the same weights with the
    adapter disabled, so only one model is loaded.
    """
    if not pairs:
        raise ValueError("preference accuracy needs at least one pair")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = AutoProcessor.from_pretrained(str(policy_path))
    dataset = preference_dataset(pairs)

    def scores(model: torch.nn.Module) -> tuple[list[float], list[float]]:
        return completion_logps(model, processor, dataset, batch_size=batch_size, max_length=max_length)

    def load(path: str | Path) -> torch.nn.Module:
        return AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype).to(device)

    base = load(policy_path)
    policy = base
    with fused_log_probs(base):  # patched before PEFT wraps it, as TRL requires
        if adapter_path is not None:
            from peft import PeftModel

            policy = PeftModel.from_pretrained(base, str(adapter_path))
        policy_logps = scores(policy)
        if adapter_path is not None and Path(reference_path) == Path(policy_path):
            with policy.disable_adapter():
                return implicit_reward_accuracy(policy_logps, scores(policy), beta)
    del base, policy  # both hold the policy's weights: free them before the reference loads
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reference = load(reference_path)
    with fused_log_probs(reference):
        return implicit_reward_accuracy(policy_logps, scores(reference), beta)
