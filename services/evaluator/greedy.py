"""Greedy accuracy: the share of items whose greedy answer matches a short reference answer.

A cheap check of a checkpoint on the user's own data, scored by the verifiable judge's rules
(``shared.ml.answer_matching.match_reference``), so no judge model is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from services.evaluator.errors import BenchmarkFormatError
from services.evaluator.prediction_cache import PredictionCache, map_with_cache
from shared.ml.answer_matching import match_reference, reference_kind

BENCHMARK = "greedy_accuracy"


class GreedyItem(BaseModel):
    """One line of the benchmark file; ``image`` is resolved to an existing file on load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: Path
    prompt: str
    reference: str

    def item_id(self, index: int) -> str:
        return f"{index}/{self.image.name}/{self.prompt}"


class GreedyScores(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    accuracy: float
    n: int
    per_kind: dict[str, float]


def load_greedy_items(path: Path) -> list[GreedyItem]:
    """Items of a JSONL file; every reference must be checkable by rule and every image must exist."""
    if not path.is_file():
        raise BenchmarkFormatError(f"greedy accuracy file {path} not found")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = GreedyItem.model_validate_json(line)
        except ValidationError as error:
            raise BenchmarkFormatError(f"{path}:{number}: {error}") from error
        image = item.image if item.image.is_absolute() else path.parent / item.image
        if not image.is_file():
            raise BenchmarkFormatError(f"{path}:{number}: image {image} not found")
        if reference_kind(item.reference) is None:
            raise BenchmarkFormatError(f"{path}:{number}: reference {item.reference!r} is not a short answer")
        items.append(item.model_copy(update={"image": image}))
    if not items:
        raise BenchmarkFormatError(f"greedy accuracy file {path} has no items")
    return items


def score_greedy(answers: Sequence[str], items: Sequence[GreedyItem]) -> GreedyScores:
    """Overall accuracy and accuracy per reference kind (yes_no, number, option, word)."""
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers for {len(items)} items")
    results = [match_reference(answer, item.reference) for answer, item in zip(answers, items, strict=True)]
    by_kind: dict[str, list[bool]] = {}
    for result in results:
        by_kind.setdefault(result.kind, []).append(result.matched)
    return GreedyScores(
        accuracy=sum(r.matched for r in results) / len(results),
        n=len(results),
        per_kind={kind: sum(hits) / len(hits) for kind, hits in sorted(by_kind.items())},
    )


def run_greedy_accuracy(
    items: Sequence[GreedyItem],
    answer: Callable[[list[tuple[bytes, str]]], list[str]],
    *,
    model_key: str,
    batch_size: int = 8,
    cache: PredictionCache | None = None,
) -> GreedyScores:
    """Answer (resuming from the cache) and score."""
    answers = map_with_cache(
        [item.item_id(index) for index, item in enumerate(items)],
        lambda index: (items[index].image.read_bytes(), items[index].prompt),
        answer,
        model_key=model_key,
        benchmark=BENCHMARK,
        batch_size=batch_size,
        cache=cache,
    )
    return score_greedy(answers, items)
