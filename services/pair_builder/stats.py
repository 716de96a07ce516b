"""Dataset statistics from the ledger: ratings per model and aspect, and what the pair rule makes of them.

Data only: the CLI and the HTML report render ``DatasetStats``. The pair counts are recomputed with
the given rule from the annotations (ties and skipped answers are not stored anywhere), so they
describe that rule even before the pair builder ran it; ``pairs_in_ledger`` is what was stored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator

from pydantic import BaseModel

from services.pair_builder.agreement import JudgePairAgreement, JudgeRatings
from services.pair_builder.handler import is_complete
from services.pair_builder.rules import PairOutcome, PairRule, build_pairs
from services.pair_builder.split import split_of
from shared.contracts import events as ev
from shared.ledger import Ledger


class AspectSummary(BaseModel):
    mean: float | None
    rated: int
    unrated: int


class ModelStats(BaseModel):
    model_id: str
    answers: int
    aspects: dict[str, AspectSummary]


class PairStats(BaseModel):
    strategy: str
    judge_ids: list[str]
    instructions: int
    pairs: int
    pairs_by_split: dict[str, int]
    ties_dropped: int
    skipped_bad_ratings: int
    below_min_margin: int
    below_quorum: int
    not_selected: int
    capped: int
    margin_histogram: dict[str, int]


class DatasetStats(BaseModel):
    judge_ids: list[str]
    annotations: int
    models: list[ModelStats]
    rating_histograms: dict[str, dict[str, int]]
    pairs: PairStats
    pairs_in_ledger: int
    agreement: list[JudgePairAgreement]


def rating_key(rating: ev.AspectRating) -> str:
    return "none" if rating.rating is None else f"{rating.rating:g}"


def collect_stats(
    ledger: Ledger, rule: PairRule = PairRule(), heldout_fraction: float = 0.005, seed: int = 42
) -> DatasetStats:
    """Statistics of the annotations of ``rule.judge_ids`` (every judge when empty), streamed."""
    totals: dict[str, dict[ev.Aspect, list[float]]] = defaultdict(lambda: defaultdict(list))
    answers: Counter[str] = Counter()
    unrated: dict[str, Counter[ev.Aspect]] = defaultdict(Counter)
    histograms: dict[ev.Aspect, Counter[str]] = {aspect: Counter() for aspect in ev.Aspect}
    annotations = 0
    judge_ratings = JudgeRatings()
    for annotation in _annotations(ledger, rule):
        annotations += 1
        judge_ratings.add(annotation)
        for rated in annotation.rated:
            answers[rated.model_id] += 1
            for aspect in ev.Aspect:
                rating = rated.ratings.get(aspect)
                if rating is None or rating.rating is None:
                    unrated[rated.model_id][aspect] += 1
                else:
                    totals[rated.model_id][aspect].append(rating.rating)
                if rating is not None:
                    histograms[aspect][rating_key(rating)] += 1
    models = [
        ModelStats(
            model_id=model_id,
            answers=answers[model_id],
            aspects={
                aspect.value: AspectSummary(
                    mean=_mean(totals[model_id][aspect]),
                    rated=len(totals[model_id][aspect]),
                    unrated=unrated[model_id][aspect],
                )
                for aspect in ev.Aspect
            },
        )
        for model_id in sorted(answers)
    ]
    return DatasetStats(
        judge_ids=list(rule.judge_ids),
        annotations=annotations,
        models=models,
        rating_histograms={a.value: dict(sorted(h.items())) for a, h in histograms.items()},
        pairs=pair_stats(pair_outcomes(ledger, rule, heldout_fraction, seed), rule),
        pairs_in_ledger=ledger.count(ev.Pair, strategy=rule.strategy),
        agreement=judge_ratings.agreement(),
    )


def pair_stats(outcomes: Iterator[PairOutcome], rule: PairRule) -> PairStats:
    counts: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    margins: Counter[str] = Counter()
    for outcome in outcomes:
        counts["instructions"] += 1
        counts["ties_dropped"] += outcome.ties_dropped
        counts["skipped_bad_ratings"] += outcome.skipped_bad_ratings
        counts["below_min_margin"] += outcome.below_min_margin
        counts["below_quorum"] += outcome.below_quorum
        counts["not_selected"] += outcome.not_selected
        counts["capped"] += outcome.capped
        for pair in outcome.pairs:
            splits[pair.split] += 1
            margins[f"{pair.margin:.2f}"] += 1
    return PairStats(
        strategy=rule.strategy,
        judge_ids=list(rule.judge_ids),
        instructions=counts["instructions"],
        pairs=sum(splits.values()),
        pairs_by_split=dict(sorted(splits.items())),
        ties_dropped=counts["ties_dropped"],
        skipped_bad_ratings=counts["skipped_bad_ratings"],
        below_min_margin=counts["below_min_margin"],
        below_quorum=counts["below_quorum"],
        not_selected=counts["not_selected"],
        capped=counts["capped"],
        margin_histogram=dict(sorted(margins.items(), key=lambda kv: float(kv[0]))),
    )


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _annotations(ledger: Ledger, rule: PairRule) -> Iterator[ev.Annotation]:
    if not rule.judge_ids:
        yield from ledger.iter_facts(ev.Annotation)
        return
    for judge_id in rule.judge_ids:
        yield from ledger.iter_facts(ev.Annotation, judge_id=judge_id)


def pair_outcomes(
    ledger: Ledger, rule: PairRule, heldout_fraction: float, seed: int
) -> Iterator[PairOutcome]:
    """The rule's outcome per instruction, as the pair builder makes it (see ``handler``)."""
    if len(rule.judge_ids) <= 1:  # each annotation on its own: stream them
        for annotation in _annotations(ledger, rule):
            split = split_of(annotation.instruction_id, heldout_fraction, seed)
            yield build_pairs([annotation], rule, split, rule.judge_ids or (annotation.judge_id,))
        return
    seen: set[str] = set()  # every complete instruction has an annotation of the first judge
    for first in ledger.iter_facts(ev.Annotation, judge_id=rule.judge_ids[0]):
        if first.instruction_id in seen:
            continue
        seen.add(first.instruction_id)
        annotations = ledger.annotations_for(first.instruction_id)
        if is_complete(annotations, rule.judge_ids):
            split = split_of(first.instruction_id, heldout_fraction, seed)
            yield build_pairs(annotations, rule, split, rule.judge_ids)
