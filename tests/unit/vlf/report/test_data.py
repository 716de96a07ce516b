"""The report's sections computed from events, without a database."""

from __future__ import annotations

import pytest

from shared.contracts import events as ev
from shared.ledger.tables import JobRow
from tests import factories
from vlf.report.data import (
    breakdowns,
    eval_metrics,
    margin_histogram,
    mme_without_yes_no,
    rating_stats,
    results_table,
    train_curves,
)


def test_rating_histogram_counts_rounded_swap_means_and_keeps_exact_mean():
    inst = factories.instruction(1)
    annotation = factories.annotation(inst, {"m1": (5, 4, None)})
    swapped = annotation.rated[0].ratings | {ev.Aspect.HELPFULNESS: ev.AspectRating(rating=3.5, raw="3.5")}
    second = annotation.model_copy(
        update={"annotation_id": "a2", "rated": [annotation.rated[0].model_copy(update={"ratings": swapped})]}
    )
    stats = {s.aspect: s for s in rating_stats([annotation, second])}
    assert stats["Helpfulness"].histogram == [0, 0, 0, 1, 1]  # 3.5 rounds half up to 4
    assert stats["Helpfulness"].mean == pytest.approx(4.25)
    assert stats["Ethical Considerations"].n == 0 and stats["Ethical Considerations"].unrated == 2


def test_margin_histogram_fills_empty_bins_up_to_the_largest_margin():
    bins = margin_histogram([0.2, 1.0, 1.4, 0.0])
    assert [(b.low, b.high, b.count) for b in bins] == [(0.0, 0.5, 2), (0.5, 1.0, 0), (1.0, 1.5, 2)]
    assert margin_histogram([]) == []


def test_train_curves_merge_topic_history_with_the_ledger_last_progress():
    history = [
        ev.TrainProgress(job_id="j", status="running", step=s, total_steps=9, loss=1.0 / s) for s in (1, 2)
    ]
    last = ev.TrainProgress(job_id="j", status="completed", step=9, total_steps=9, loss=0.05)
    job = JobRow(id="j", kind="train", status="completed", progress=last.model_dump(mode="json"))
    [curve] = train_curves([job], history)
    assert [p.step for p in curve.points] == [1, 2, 9] and curve.status == "completed"
    [ledger_only] = train_curves([job], [])
    assert [p.loss for p in ledger_only.points] == [0.05]


def _result(name: str, benchmark: str, metrics: dict, status: str = "completed") -> ev.EvalResult:
    return ev.EvalResult(
        result_id=f"{name}-{benchmark}-{status}",
        eval_id=name,
        model=ev.ModelRef(name=name, base_model="tiny"),
        benchmark=benchmark,
        status=status,
        metrics=metrics,
    )


def test_eval_metrics_map_benchmarks_to_table_columns_and_ignore_failures():
    results = [
        _result("base", "mme", {"perception": 1000.0, "cognition": 300.0, "total": 1300.0}),
        _result("tuned", "mme", {"perception": 1100.0}),
        _result("tuned", "mmhal", {"average": 9.0}, status="failed"),
        _result("tuned", "preference_accuracy", {"accuracy": 0.7, "n": 10.0}),
    ]
    metrics = eval_metrics(results)
    assert metrics == {
        "base": {"mme_perception": 1000.0, "mme_cognition": 300.0},
        "tuned": {"mme_perception": 1100.0, "preference_accuracy": 0.7},
    }
    assert results_table(metrics)["relative_change"]["mme_perception"] == "+10.0%"
    assert results_table({}) is None


def test_breakdowns_list_each_benchmarks_parts_in_published_order_base_and_tuned():
    results = [
        _result("base", "mme", {"perception": 90.0, "count": 40.0, "existence": 50.0}),
        _result("tuned", "mme", {"perception": 99.0, "existence": 60.0, "OCR": 70.0}),
        _result("tuned", "mmhal", {"average": 3.0, "counting": 2.5, "attribute": 4.0}),
        _result("base", "mmvet", {"total": 40.0, "ocr": 30.0}, status="failed"),
        _result("other", "mmvet", {"total": 40.0, "ocr": 30.0}),
    ]

    found = {b.benchmark: [(r.part, r.base, r.tuned) for r in b.rows] for b in breakdowns(results)}

    assert found == {
        "mme": [("existence", 50.0, 60.0), ("count", 40.0, None), ("OCR", None, 70.0)],
        "mmhal": [("attribute", None, 4.0), ("counting", None, 2.5)],
    }
    assert breakdowns([]) == []


def test_a_model_that_never_answers_yes_or_no_on_mme_is_named():
    def mme(name: str, other: int) -> ev.EvalResult:
        per_subtask = {
            "color": {"images": 2, "other_answers": other},
            "count": {"images": 1, "other_answers": 2},
        }
        return _result(name, "mme", {"perception": 0.0}).model_copy(
            update={"details": {"per_subtask": per_subtask}}
        )

    assert mme_without_yes_no([mme("base", 4), mme("tuned", 3)]) == {"base": 6}
    assert mme_without_yes_no([mme("base", 4), mme("base", 1)]) == {}, "the latest run counts"
