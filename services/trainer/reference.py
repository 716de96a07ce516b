"""Train against reference log-probs computed once, instead of a reference forward at every step.

TRL's ``DPOTrainer`` already reads ``ref_chosen_logps``/``ref_rejected_logps`` from the batch when its
``precompute_ref_logps`` flag is set, but refuses to precompute them for image data. These two small
pieces let it consume columns computed by ``shared.ml.logps``: the trainer keeps the columns
through column pruning and sets the flag, the collator passes them through.
Depends only on torch and TRL, so the GPU benchmark can use it standalone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclass
class VisionPreferenceWithRefCollator(DataCollatorForVisionPreference):
    """TRL's vision preference collator that also passes the precomputed reference log-probs through."""

    def torch_call(self, examples: list[dict]) -> dict:
        references = {
            column: torch.tensor([example.pop(column) for example in examples], dtype=torch.float32)
            for column in REF_COLUMNS
        }
        return {**super().torch_call(examples), **references}


class PrecomputedRefDPOTrainer(DPOTrainer):
    """``DPOTrainer`` that reads reference log-probs from the dataset instead of running the reference.

    The train dataset must carry ``ref_chosen_logps`` and ``ref_rejected_logps``. For full
    fine-tuning TRL loads a reference copy during construction; it is released right after.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        missing = [column for column in REF_COLUMNS if column not in self.train_dataset.column_names]
        if missing:
            raise ValueError(f"the train dataset lacks the precomputed columns {missing}")
        self.precompute_ref_logps = True  # the flag DPOTrainer._compute_loss reads
        self.ref_model = None

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *REF_COLUMNS]
