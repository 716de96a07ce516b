"""The topic registry: one place binds each topic name to its event model and key rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.contracts import events as ev


@dataclass(frozen=True)
class TopicSpec:
    name: str
    model: type[ev.Event]
    key: Callable[[ev.Event], str]
    partitions: int = 6
    retention_ms: int = 14 * 24 * 3600 * 1000

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"


def _by_instruction(event: ev.Event) -> str:
    return event.instruction_id  # type: ignore[attr-defined]


def _by_job(event: ev.Event) -> str:
    return event.job_id  # type: ignore[attr-defined]


def _by_eval(event: ev.Event) -> str:
    return event.eval_id  # type: ignore[attr-defined]


INSTRUCTIONS = TopicSpec("vlf.instructions.v1", ev.Instruction, _by_instruction)
RESPONSES = TopicSpec("vlf.responses.v1", ev.Response, _by_instruction)
ANNOTATIONS = TopicSpec("vlf.annotations.v1", ev.Annotation, _by_instruction)
PAIRS = TopicSpec("vlf.pairs.v1", ev.Pair, _by_instruction)
TRAIN_REQUESTS = TopicSpec("vlf.train.requests.v1", ev.TrainRequest, _by_job, partitions=1)
TRAIN_PROGRESS = TopicSpec("vlf.train.progress.v1", ev.TrainProgress, _by_job, partitions=1)
CHECKPOINTS = TopicSpec("vlf.checkpoints.v1", ev.Checkpoint, _by_job, partitions=1)
EVAL_REQUESTS = TopicSpec("vlf.eval.requests.v1", ev.EvalRequest, _by_eval, partitions=1)
EVAL_RESULTS = TopicSpec("vlf.eval.results.v1", ev.EvalResult, _by_eval, partitions=1)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    INSTRUCTIONS,
    RESPONSES,
    ANNOTATIONS,
    PAIRS,
    TRAIN_REQUESTS,
    TRAIN_PROGRESS,
    CHECKPOINTS,
    EVAL_REQUESTS,
    EVAL_RESULTS,
)

_BY_NAME = {spec.name: spec for spec in ALL_TOPICS}


def topic(name: str) -> TopicSpec:
    """Look a topic up by name; unknown names are a programming error."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {sorted(_BY_NAME)}") from None


# The consumer groups of the single-group services; samplers and annotators have one group per
# model or judge (below). The chart's KEDA triggers and `vlf status` read lag by these names.
PAIR_BUILDER_GROUP = "vlf-pair-builder"
TRAINER_GROUP = "vlf-trainer"
EVALUATOR_GROUP = "vlf-evaluator"


def sampler_group(model_id: str) -> str:
    """The consumer group of a model's samplers: its replicas share the instructions (the chart's
    KEDA trigger scales on this group's lag)."""
    return f"vlf-sampler.{model_id}"


def annotator_group(judge_id: str) -> str:
    """The consumer group of a judge's annotators, as ``sampler_group``."""
    return f"vlf-annotator.{judge_id}"
