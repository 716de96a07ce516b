"""Ratings -> preference pairs: the paper's rule and its variants, as pure functions.

Every strategy starts from the same candidates, every 2-combination of an instruction's answers
(DESIGN.md "pairs"), and classifies each one:

- one side has no usable score (a non-numeric rating, or a counted judge did not rate it):
  ``skipped_bad_ratings``;
- both sides score the same: ``ties_dropped``;
- otherwise a valid pair: the higher score is chosen, ``margin`` = chosen - rejected.

The strategy then keeps some of the valid pairs:

- ``vlfeedback``: all of them (score = mean of the three aspect ratings; the paper's rule);
- ``min_margin``: those with margin >= ``min_margin``;
- ``best_vs_worst``: the one with the largest margin (highest vs lowest score), none on a tie;
- ``aspect:<name>``: all of them, scored by that one aspect, e.g. ``aspect:Visual Faithfulness``;
- ``agreement``: those that at least ``quorum`` of the counted judges (default: all of them) order
  the same way on their own scores, so a pair no quorum backs never reaches training. Needs two or
  more ``judge_ids``; a judge that scores the two answers equal does not back the pair.

``max_pairs_per_instruction`` then keeps the largest margins (equal margins: smaller pair id first).

Several judges: each answer's rating of an aspect is the mean over the counted judges, and the
score is the mean over aspects of those means. An answer that any counted judge did not rate, or
rated non-numerically on an aspect in use, has no score. Scores are exact fractions of the
ratings (which may be halves: swap mode's means), so equal means compare equal whatever the
number of judges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from itertools import combinations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contracts import events as ev
from shared.contracts.ids import pair_id

PLAIN_STRATEGIES = ("vlfeedback", "min_margin", "best_vs_worst", "agreement")
ASPECT_PREFIX = "aspect:"


def strategy_aspects(strategy: str) -> tuple[ev.Aspect, ...]:
    """The aspects a strategy scores with; ``ValueError`` for an unknown strategy."""
    if strategy in PLAIN_STRATEGIES:
        return tuple(ev.Aspect)
    if strategy.startswith(ASPECT_PREFIX):
        name = strategy.removeprefix(ASPECT_PREFIX)
        try:
            return (ev.Aspect(name),)
        except ValueError:
            raise ValueError(
                f"unknown aspect {name!r} in strategy {strategy!r}; aspects: {[a.value for a in ev.Aspect]}"
            ) from None
    raise ValueError(
        f"unknown pair strategy {strategy!r}; expected one of {list(PLAIN_STRATEGIES)} or 'aspect:<name>'"
    )


class PairRule(BaseModel):
    """How pairs are made. Defaults: the paper (vlfeedback, no margin, no cap, any single judge)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: str = "vlfeedback"
    min_margin: float = Field(0.0, ge=0, description="Only used by the min_margin strategy.")
    max_pairs_per_instruction: int | None = Field(None, ge=1)
    judge_ids: tuple[str, ...] = Field(
        (), description="Judges whose ratings count (averaged). Empty: each annotation on its own."
    )
    quorum: int | None = Field(
        None, ge=2, description="Only used by the agreement strategy. None: every counted judge."
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        strategy_aspects(value)
        return value

    @model_validator(mode="after")
    def _quorum_matches_judges(self) -> PairRule:
        if self.strategy != "agreement":
            if self.quorum is not None:
                raise ValueError(f"quorum goes with strategy 'agreement' only (got {self.strategy!r})")
            return self
        if len(self.judge_ids) < 2:
            raise ValueError(f"strategy 'agreement' needs two or more judge_ids (got {list(self.judge_ids)})")
        if self.quorum is not None and self.quorum > len(self.judge_ids):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.judge_ids)} judges counted")
        return self

    def required_backers(self) -> int:
        """How many judges must order a pair the same way for the agreement strategy to keep it."""
        return self.quorum if self.quorum is not None else len(self.judge_ids)


@dataclass(frozen=True)
class ScoredAnswer:
    response_id: str
    model_id: str
    text: str
    score: Fraction | None


@dataclass(frozen=True)
class PairOutcome:
    """The pairs of one instruction and what the rule dropped (for stats)."""

    pairs: list[ev.Pair]
    ties_dropped: int = 0
    skipped_bad_ratings: int = 0
    below_min_margin: int = 0
    below_quorum: int = 0
    not_selected: int = 0
    capped: int = 0


def one_per_judge(annotations: list[ev.Annotation]) -> dict[str, ev.Annotation]:
    """One annotation per judge: the one rating the most answers, then the newest, then the largest id."""
    chosen: dict[str, ev.Annotation] = {}
    for ann in annotations:
        current = chosen.get(ann.judge_id)
        if current is None or _coverage(ann) > _coverage(current):
            chosen[ann.judge_id] = ann
    return chosen


def _coverage(ann: ev.Annotation) -> tuple[int, datetime, str]:
    return len(ann.rated), ann.created_at, ann.annotation_id


def score_answers(annotations: list[ev.Annotation], aspects: tuple[ev.Aspect, ...]) -> list[ScoredAnswer]:
    """Every answer any of these annotations rated (one annotation per judge), sorted by response id."""
    answers: dict[str, ev.RatedResponse] = {}
    for ann in annotations:
        for rated in ann.rated:
            answers.setdefault(rated.response_id, rated)
    ratings_by_judge = [{r.response_id: r.ratings for r in ann.rated} for ann in annotations]
    scored = []
    for rid in sorted(answers):
        per_judge = [ratings.get(rid) for ratings in ratings_by_judge]
        scored.append(
            ScoredAnswer(
                response_id=rid,
                model_id=answers[rid].model_id,
                text=answers[rid].text,
                score=_combined_score(per_judge, aspects),
            )
        )
    return scored


def _combined_score(
    per_judge: list[dict[ev.Aspect, ev.AspectRating] | None], aspects: tuple[ev.Aspect, ...]
) -> Fraction | None:
    """Mean over aspects of (mean over judges); None when any judge lacks a numeric rating."""
    aspect_means = []
    for aspect in aspects:
        values: list[Fraction] = []
        for ratings in per_judge:
            rating = ratings.get(aspect) if ratings is not None else None
            if rating is None or rating.rating is None:
                return None
            values.append(Fraction(rating.rating))
        aspect_means.append(sum(values, Fraction(0)) / len(values))
    return sum(aspect_means, Fraction(0)) / len(aspect_means)


def build_pairs(
    annotations: list[ev.Annotation], rule: PairRule, split: str, judge_ids: tuple[str, ...]
) -> PairOutcome:
    """Pairs of one instruction from the annotations of ``judge_ids`` (others are ignored).

    The caller decides which judges count (see the handler); each needs an annotation here.
    """
    by_judge = one_per_judge([a for a in annotations if a.judge_id in judge_ids])
    missing = sorted(set(judge_ids) - set(by_judge))
    if missing:
        raise ValueError(f"no annotation from judges {missing} among {sorted(by_judge)}")
    counted = [by_judge[j] for j in sorted(by_judge)]
    instruction = counted[0].instruction
    answers = score_answers(counted, strategy_aspects(rule.strategy))

    valid: list[ev.Pair] = []
    ties = bad = 0
    for a, b in combinations(answers, 2):
        if a.score is None or b.score is None:
            bad += 1
        elif a.score == b.score:
            ties += 1
        else:
            chosen, rejected = (a, b) if a.score > b.score else (b, a)
            valid.append(
                _pair(instruction, (chosen, chosen.score), (rejected, rejected.score), rule, split, judge_ids)
            )

    kept = valid
    below = below_quorum = not_selected = 0
    if rule.strategy == "min_margin":
        kept = [p for p in valid if p.margin >= rule.min_margin]
        below = len(valid) - len(kept)
    elif rule.strategy == "agreement":
        kept = _backed_by_quorum(valid, counted, rule)
        below_quorum = len(valid) - len(kept)
    elif rule.strategy == "best_vs_worst":
        kept = _largest_margins(valid, 1)
        not_selected = len(valid) - len(kept)
    capped_pairs = kept
    if rule.max_pairs_per_instruction is not None:
        capped_pairs = _largest_margins(kept, rule.max_pairs_per_instruction)
    return PairOutcome(
        pairs=sorted(capped_pairs, key=lambda p: p.pair_id),
        ties_dropped=ties,
        skipped_bad_ratings=bad,
        below_min_margin=below,
        below_quorum=below_quorum,
        not_selected=not_selected,
        capped=len(kept) - len(capped_pairs),
    )


def _backed_by_quorum(pairs: list[ev.Pair], counted: list[ev.Annotation], rule: PairRule) -> list[ev.Pair]:
    """The pairs that enough judges, each on its own scores, order as the averaged score does."""
    aspects = strategy_aspects(rule.strategy)
    own_scores = [{a.response_id: a.score for a in score_answers([ann], aspects)} for ann in counted]
    kept = []
    for pair in pairs:
        backers = 0
        for scores in own_scores:
            chosen, rejected = scores.get(pair.chosen.response_id), scores.get(pair.rejected.response_id)
            backers += chosen is not None and rejected is not None and chosen > rejected
        if backers >= rule.required_backers():
            kept.append(pair)
    return kept


def _largest_margins(pairs: list[ev.Pair], limit: int) -> list[ev.Pair]:
    return sorted(pairs, key=lambda p: (-p.margin, p.pair_id))[:limit]


def _pair(
    instruction: ev.Instruction,
    chosen: tuple[ScoredAnswer, Fraction],
    rejected: tuple[ScoredAnswer, Fraction],
    rule: PairRule,
    split: str,
    judge_ids: tuple[str, ...],
) -> ev.Pair:
    """The pair id hashes the strategy and the judges, so pairs from other judges never collide."""
    (chosen_answer, chosen_score), (rejected_answer, rejected_score) = chosen, rejected
    judges = sorted(judge_ids)
    strategy_key = f"{rule.strategy}|{','.join(judges)}"
    return ev.Pair(
        pair_id=pair_id(
            instruction.instruction_id, chosen_answer.response_id, rejected_answer.response_id, strategy_key
        ),
        instruction_id=instruction.instruction_id,
        prompt=instruction.prompt,
        image_uris=instruction.image_uris,
        chosen=_side(chosen_answer, chosen_score),
        rejected=_side(rejected_answer, rejected_score),
        margin=float(chosen_score - rejected_score),
        strategy=rule.strategy,
        judge_ids=judges,
        split=split,
    )


def _side(answer: ScoredAnswer, score: Fraction) -> ev.PairSide:
    return ev.PairSide(
        response_id=answer.response_id, model_id=answer.model_id, text=answer.text, score=float(score)
    )
