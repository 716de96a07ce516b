"""How far two judges agree, where both rated the same answers: per aspect the quadratic-weighted
Cohen's kappa of their 1-5 ratings, and the share of answer pairs they order the same way.

Kappa, not raw agreement, because two judges that both rate almost everything 4 agree often by
chance; quadratic weights, because on an ordinal scale 4 against 5 is a smaller disagreement than 1
against 5 (the usual choice for rating scales). Swap mode's averaged ratings (4.5) are rounded half
up to the scale's categories. The order share is what a pair rule relies on: of the answer pairs
that both judges score unequally (mean of the aspects), how many they rank the same way.

Written here rather than taken from scikit-learn's ``cohen_kappa_score(weights="quadratic")``
(same formula) so the base install does not gain scikit-learn and SciPy for ten lines.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

from pydantic import BaseModel

from shared.contracts import events as ev

SCALE = (1, 2, 3, 4, 5)


class JudgePairAgreement(BaseModel):
    judges: tuple[str, str]
    answers: dict[str, int]  # per aspect: answers both rated
    kappa: dict[str, float | None]  # per aspect; None where undefined (fewer than 2 answers, one category)
    ordered_pairs: int  # answer pairs both judges score unequally
    order_agreement: float | None


def quadratic_weighted_kappa(first: list[int], second: list[int]) -> float | None:
    """Cohen's kappa with quadratic weights over ``SCALE``; None where it is undefined."""
    n = len(first)
    if n < 2 or n != len(second):
        return None
    k = len(SCALE)
    index = {value: i for i, value in enumerate(SCALE)}
    observed = [[0.0] * k for _ in range(k)]
    for a, b in zip(first, second, strict=True):
        observed[index[a]][index[b]] += 1
    rows = [sum(row) for row in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    weight = [[(i - j) ** 2 / (k - 1) ** 2 for j in range(k)] for i in range(k)]
    disagreement = sum(weight[i][j] * observed[i][j] for i in range(k) for j in range(k))
    chance = sum(weight[i][j] * rows[i] * cols[j] / n for i in range(k) for j in range(k))
    return None if chance == 0 else round(1 - disagreement / chance, 4)


class JudgeRatings:
    """The ratings of every judge, gathered one annotation at a time (within ``collect_stats``'s
    single pass over the ledger), then compared pair by pair."""

    def __init__(self) -> None:
        # instruction -> judge -> response -> aspect -> rating
        self._ratings: dict[str, dict[str, dict[str, dict[ev.Aspect, float]]]] = defaultdict(dict)

    def add(self, annotation: ev.Annotation) -> None:
        self._ratings[annotation.instruction_id][annotation.judge_id] = {
            r.response_id: {a: x.rating for a, x in r.ratings.items() if x.rating is not None}
            for r in annotation.rated
        }

    def agreement(self) -> list[JudgePairAgreement]:
        """Agreement for every pair of judges that rated answers in common."""
        judges = sorted({judge for by_judge in self._ratings.values() for judge in by_judge})
        pairs = (self._pair(first, second) for first, second in itertools.combinations(judges, 2))
        return [pair for pair in pairs if pair is not None]

    def _pair(self, first: str, second: str) -> JudgePairAgreement | None:
        rated: dict[ev.Aspect, tuple[list[int], list[int]]] = {a: ([], []) for a in ev.Aspect}
        ordered = agreed = 0
        for by_judge in self._ratings.values():
            if first not in by_judge or second not in by_judge:
                continue
            a, b = by_judge[first], by_judge[second]
            common = sorted(set(a) & set(b))
            for response, aspect in itertools.product(common, ev.Aspect):
                if aspect in a[response] and aspect in b[response]:
                    rated[aspect][0].append(_category(a[response][aspect]))
                    rated[aspect][1].append(_category(b[response][aspect]))
            for x, y in itertools.combinations(common, 2):
                order_a = _sign(_score(a[x]) - _score(a[y]))
                order_b = _sign(_score(b[x]) - _score(b[y]))
                if order_a and order_b:
                    ordered += 1
                    agreed += order_a == order_b
        if not any(rated[a][0] for a in ev.Aspect):
            return None
        return JudgePairAgreement(
            judges=(first, second),
            answers={a.value: len(rated[a][0]) for a in ev.Aspect},
            kappa={a.value: quadratic_weighted_kappa(*rated[a]) for a in ev.Aspect},
            ordered_pairs=ordered,
            order_agreement=round(agreed / ordered, 4) if ordered else None,
        )


def _category(rating: float) -> int:
    return min(SCALE[-1], max(SCALE[0], math.floor(rating + 0.5)))


def _score(ratings: dict[ev.Aspect, float]) -> float:
    return sum(ratings.values()) / len(ratings) if ratings else math.nan


def _sign(value: float) -> int:
    return 0 if math.isnan(value) or value == 0 else (1 if value > 0 else -1)
