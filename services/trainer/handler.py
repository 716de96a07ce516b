"""Training request -> a queued job in the ledger. The job itself runs in its own process (job.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.contracts import events as ev
from shared.errors import PermanentError
from shared.ledger import Ledger


class InvalidTrainRequest(PermanentError):
    """A request that can never run (e.g. LoRA settings without LoRA); dead-lettered with the reason."""


@dataclass(frozen=True)
class TrainerContext:
    ledger: Ledger


def check_request(request: ev.TrainRequest) -> None:
    hp = request.hparams
    if hp.loss_weights is not None and len(hp.loss_weights) != len(hp.loss_type):
        raise InvalidTrainRequest(
            f"loss_weights {hp.loss_weights} needs one weight per loss_type entry {hp.loss_type}"
        )
    looks_local = request.base_model.startswith(("/", "./", "../", "~"))
    if looks_local and not Path(request.base_model).expanduser().exists():
        raise InvalidTrainRequest(f"base model path {request.base_model!r} does not exist")
    if request.merge_adapter and not request.use_lora:
        raise InvalidTrainRequest("merge_adapter=true needs use_lora=true (a full fine-tune has no adapter)")


def handle_train_request(event: ev.TrainRequest, ctx: TrainerContext) -> list[ev.TrainProgress]:
    """Record the job (once) and announce it as queued; a redelivered request changes nothing."""
    check_request(event)
    if not ctx.ledger.create_job(event.job_id, "train", event.model_dump(mode="json")):
        return []
    return [ev.TrainProgress(job_id=event.job_id, status="queued")]
