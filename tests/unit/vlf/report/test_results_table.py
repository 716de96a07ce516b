import json

import pytest

from services.evaluator.mme import MmeScores
from services.evaluator.mmhal import MmhalScores
from vlf.report.results_table import build_results_table, metrics_from_scores, render_results_markdown

# The paper's Table: Qwen-VL-Chat vs Silkie.
PAPER_BASE = {"mme_perception": 1440.5, "mme_cognition": 362.5, "mmhal_score": 2.89, "mmvet_total": 45.7}
PAPER_TUNED = {"mme_perception": 1539.6, "mme_cognition": 397.1, "mmhal_score": 3.02, "mmvet_total": 49.9}


def test_relative_change_reproduces_the_papers_percentages() -> None:
    table = build_results_table(PAPER_BASE, PAPER_TUNED, base_name="Qwen-VL-Chat", tuned_name="Silkie")

    # (1539.6 - 1440.5) / 1440.5 = 6.88% ; (397.1 - 362.5) / 362.5 = 9.54% ; (3.02 - 2.89) / 2.89 = 4.50%
    # (49.9 - 45.7) / 45.7 = 9.19%
    assert table["relative_change"] == {
        "mme_perception": "+6.9%",
        "mme_cognition": "+9.5%",
        "mmhal_score": "+4.5%",
        "mmvet_total": "+9.2%",
    }
    assert table["relative_change_percent"]["mme_perception"] == pytest.approx(99.1 / 1440.5 * 100)
    assert json.loads(json.dumps(table)) == table


def test_markdown_has_a_row_per_model_and_a_relative_change_row() -> None:
    table = build_results_table(PAPER_BASE, PAPER_TUNED, base_name="Qwen-VL-Chat", tuned_name="Silkie")

    assert render_results_markdown(table) == (
        "| Model | MME perception | MME cognition | MMHal-Bench score | MM-Vet |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| Qwen-VL-Chat | 1440.5 | 362.5 | 2.89 | 45.7 |\n"
        "| Silkie | 1539.6 | 397.1 | 3.02 | 49.9 |\n"
        "| Relative change | +6.9% | +9.5% | +4.5% | +9.2% |\n"
    )


def test_columns_follow_the_paper_order_and_missing_values_show_as_n_a() -> None:
    base = {"greedy_accuracy": 0.5, "mmhal_hallucination_rate": 0.5, "preference_accuracy": 0.6}
    tuned = {"greedy_accuracy": 0.75, "mmhal_hallucination_rate": 0.4, "mme_perception": 100.0}

    table = build_results_table(base, tuned)

    assert [column["key"] for column in table["columns"]] == [
        "mme_perception",
        "mmhal_hallucination_rate",
        "preference_accuracy",
        "greedy_accuracy",
    ]
    lines = render_results_markdown(table).splitlines()
    assert lines[2] == "| Base | n/a | 0.50 | 0.600 | 0.500 |"
    assert lines[3] == "| Tuned | 100.0 | 0.40 | n/a | 0.750 |"
    assert lines[4] == "| Relative change | n/a | -20.0% | n/a | +50.0% |"


def test_zero_base_has_no_relative_change() -> None:
    table = build_results_table({"preference_accuracy": 0.0}, {"preference_accuracy": 0.5})
    assert table["relative_change"] == {"preference_accuracy": None}


def test_unknown_metric_names_are_refused() -> None:
    with pytest.raises(ValueError, match="mme_percepton"):
        build_results_table({"mme_percepton": 1.0}, {})


def test_metrics_from_scores_takes_the_reported_sums() -> None:
    mme = MmeScores(per_subtask={}, perception=1440.5, cognition=362.5, total=1803.0)
    mmhal = MmhalScores(average=2.89, hallucination_rate=0.5, per_type={}, n=96)

    assert metrics_from_scores(mme, mmhal) == {
        "mme_perception": 1440.5,
        "mme_cognition": 362.5,
        "mmhal_score": 2.89,
        "mmhal_hallucination_rate": 0.5,
    }
