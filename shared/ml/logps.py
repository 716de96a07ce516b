"""Sequence log-probabilities of chosen and rejected answers, and the data format they are read from.

One code path serves the reference precompute before DPO training and the evaluator's held-out
preference accuracy. It batches exactly like TRL's vision preference collator and scores with TRL's
fused LM head, so the numbers are the ones ``DPOTrainer`` would compute itself, without materialising
``(batch, sequence, vocabulary)`` logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from datasets import Dataset
from transformers import PreTrainedModel, ProcessorMixin
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.utils import add_fused_lm_head

NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


@contextmanager
def fused_log_probs(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """TRL's fused LM head on ``model`` for the duration; the model's own forward is restored after."""
    own_forward = vars(model).get("forward")
    add_fused_lm_head(model)
    try:
        yield model
    finally:
        if own_forward is None:
            del model.forward
        else:
            model.forward = own_forward


def batch_logps(
    model: torch.nn.Module, batch: dict, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of a collated batch (chosen rows first, then rejected)."""
    model_inputs = {key: value.to(device) for key, value in batch.items() if key not in NON_MODEL_KEYS}
    labels = model_inputs["input_ids"].masked_fill(batch["completion_mask"].to(device) == 0, -100)
    per_token = model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
    chosen, rejected = per_token.sum(dim=1).float().chunk(2, dim=0)
    return chosen.cpu(), rejected.cpu()


def completion_logps(
    model: torch.nn.Module,
    processor: ProcessorMixin,
    dataset: Dataset,
    *,
    batch_size: int,
    max_length: int | None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[float], list[float]]:
    """Chosen and rejected log-probs for every row of ``dataset``, in order, without gradients.

    ``model`` must already carry the fused LM head (see ``fused_log_probs``; with PEFT, patch the
    base model before wrapping it). ``autocast_dtype`` mirrors the trainer's mixed precision.
    """
    collator = DataCollatorForVisionPreference(processor=processor, max_length=max_length)
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    chosen: list[float] = []
    rejected: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
            batch_chosen, batch_rejected = batch_logps(model, collator(rows), device)
            chosen.extend(batch_chosen.tolist())
            rejected.extend(batch_rejected.tolist())
    model.train(was_training)
    return chosen, rejected
