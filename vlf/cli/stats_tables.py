"""``vlf stats`` as tables: ratings per model and aspect, rating histograms, what the pair rule
makes, and the agreement of every two judges (``--json`` prints the same figures as data)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from services.pair_builder.stats import DatasetStats
from shared.contracts import events as ev

ASPECTS = [aspect.value for aspect in ev.Aspect]


def stats_tables(stats: DatasetStats) -> Group:
    return Group(
        _ratings(stats), _histograms(stats), _pairs(stats), *([_agreement(stats)] if stats.agreement else [])
    )


def _ratings(stats: DatasetStats) -> Table:
    judges = ", ".join(stats.judge_ids) or "every judge"
    table = Table(
        "model",
        "answers",
        *ASPECTS,
        title=f"Mean rating per aspect ({stats.annotations} annotations; judges: {judges})",
    )
    for model in stats.models:
        cells = []
        for aspect in ASPECTS:
            summary = model.aspects.get(aspect)
            if summary is None or summary.mean is None:
                cells.append("n/a")
            else:
                cells.append(
                    f"{summary.mean:.2f}" + (f" ({summary.unrated} unrated)" if summary.unrated else "")
                )
        table.add_row(model.model_id, str(model.answers), *cells)
    return table


def _histograms(stats: DatasetStats) -> Table:
    levels = sorted(
        {level for counts in stats.rating_histograms.values() for level in counts}, key=_level_order
    )
    table = Table("aspect", *levels, title="Ratings given")
    for aspect in ASPECTS:
        counts = stats.rating_histograms.get(aspect, {})
        table.add_row(aspect, *(str(counts.get(level, 0)) for level in levels))
    return table


def _pairs(stats: DatasetStats) -> Table:
    pairs = stats.pairs
    table = Table(
        "figure", "value", title=f"Pairs by rule {pairs.strategy!r} (in the ledger: {stats.pairs_in_ledger})"
    )
    rows = {
        "instructions": pairs.instructions,
        "pairs": pairs.pairs,
        **{f"pairs, {split}": count for split, count in sorted(pairs.pairs_by_split.items())},
        "ties dropped": pairs.ties_dropped,
        "skipped (rating not a number)": pairs.skipped_bad_ratings,
        "below min margin": pairs.below_min_margin,
        "below quorum": pairs.below_quorum,
        "not selected": pairs.not_selected,
        "capped": pairs.capped,
    }
    for name, value in rows.items():
        table.add_row(name, str(value))
    for margin, count in pairs.margin_histogram.items():
        table.add_row(f"margin {margin}", str(count))
    return table


def _agreement(stats: DatasetStats) -> Table:
    table = Table(
        "judges",
        *(f"kappa {aspect}" for aspect in ASPECTS),
        "pairs ordered by both",
        "order agreed",
        title="Agreement between judges (quadratic-weighted kappa)",
    )
    for agreement in stats.agreement:
        kappas = [_number(agreement.kappa.get(aspect)) for aspect in ASPECTS]
        table.add_row(
            " / ".join(agreement.judges),
            *kappas,
            str(agreement.ordered_pairs),
            _number(agreement.order_agreement),
        )
    return table


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _level_order(level: str) -> tuple[int, float]:
    try:
        return 0, float(level)
    except ValueError:
        return 1, 0.0
