import dataclasses
from pathlib import Path

import pytest

from devkit.benchmark_fixtures import build_mme_fixture
from services.evaluator.errors import BenchmarkFormatError, PredictionCountError
from services.evaluator.mme import (
    MmeItem,
    MmePrediction,
    load_mme,
    predict_mme,
    read_official_results,
    run_mme,
    score_mme,
    write_official_results,
)
from services.evaluator.prediction_cache import JsonlPredictionCache


@pytest.fixture
def mme_root(tmp_path: Path) -> Path:
    root = tmp_path / "MME_Benchmark_release_version"
    build_mme_fixture(root, ["color"], images_per_subtask=3, seed=1)
    build_mme_fixture(root, ["artwork", "code_reasoning"], images_per_subtask=2, seed=2)
    return root


def test_load_mme_reads_both_release_layouts(tmp_path: Path) -> None:
    root = tmp_path / "mme"
    truth = build_mme_fixture(root, ["color", "artwork", "code_reasoning"], images_per_subtask=2, seed=0)

    items = load_mme(root, ["color", "artwork", "code_reasoning"])

    assert (root / "color" / "0000.jpg").is_file()
    assert (root / "artwork" / "images" / "0000.jpg").is_file()
    assert (root / "artwork" / "questions_answers_YN" / "0000.txt").is_file()
    assert (root / "code_reasoning" / "0001.png").is_file()
    assert len(items) == 12
    loaded = {(item.subtask, item.image_path.name): [] for item in items}
    for item in items:
        assert item.image_path.is_file()
        loaded[(item.subtask, item.image_path.name)].append([item.question, item.answer])
    expected = {(subtask, name): qa for subtask, images in truth.items() for name, qa in images.items()}
    assert loaded == expected
    assert all(
        question.endswith("Please answer yes or no.") for qa in expected.values() for question, _ in qa
    )
    assert items[0].image_path == root / "color" / "0000.jpg"
    assert items[4].image_path == root / "artwork" / "images" / "0000.jpg"


def test_load_mme_defaults_to_all_fourteen_subtasks_and_reports_missing_ones(mme_root: Path) -> None:
    with pytest.raises(BenchmarkFormatError, match="existence"):
        load_mme(mme_root)


def test_load_mme_rejects_answers_other_than_yes_or_no(mme_root: Path) -> None:
    (mme_root / "color" / "0000.txt").write_text("Is it red? Please answer yes or no.\tMaybe\n")
    with pytest.raises(BenchmarkFormatError, match="Maybe"):
        load_mme(mme_root, ["color"])


def test_load_mme_rejects_unknown_subtask_names(mme_root: Path) -> None:
    with pytest.raises(ValueError, match="colour"):
        load_mme(mme_root, ["colour"])


# Planted replies, in file order: per image the first question's answer is Yes, the second's No.
PLANTED = {
    # color: img0 "Yes."->yes ok, "no,"->no ok (image right); img1 "yes, because"->yes ok,
    # "I think so"->other wrong; img2 ""->other wrong, "Not sure"->no ok.
    # acc = 4/6, acc+ = 1/3 -> 66.667 + 33.333 = 100.0
    "color": ["Yes.", "no,", "yes, because the shape is red", "I think so", "", "Not sure"],
    # artwork: img0 "Yes" ok, "yes" wrong; img1 "I think yes"->other wrong, "no" ok.
    # acc = 2/4, acc+ = 0/2 -> 50 + 0 = 50.0
    "artwork": ["Yes", "yes", "I think yes", "no"],
    # code_reasoning: img0 "YES" ok, "No" ok (image right); img1 "yes" ok, "Yes" wrong.
    # acc = 3/4, acc+ = 1/2 -> 75 + 50 = 125.0
    "code_reasoning": ["YES", "No", "yes", "Yes"],
}
# perception = color + artwork = 150.0; cognition = code_reasoning = 125.0; total = 275.0


def _planted_predictions(items: list[MmeItem]) -> list[MmePrediction]:
    replies = {subtask: iter(values) for subtask, values in PLANTED.items()}
    return [
        MmePrediction(
            item.subtask, item.image_path.name, item.question, item.answer, next(replies[item.subtask])
        )
        for item in items
    ]


def test_score_mme_matches_hand_computed_scores(mme_root: Path) -> None:
    items = load_mme(mme_root, list(PLANTED))
    assert [item.answer for item in items] == ["Yes", "No"] * 7

    scores = score_mme(_planted_predictions(items))

    color, artwork, code = (scores.per_subtask[name] for name in ("color", "artwork", "code_reasoning"))
    assert (color.acc, color.acc_plus, color.score) == pytest.approx((4 / 6, 1 / 3, 100.0))
    assert (artwork.acc, artwork.acc_plus, artwork.score) == pytest.approx((0.5, 0.0, 50.0))
    assert (code.acc, code.acc_plus, code.score) == pytest.approx((0.75, 0.5, 125.0))
    assert (color.images, color.other_answers) == (3, 2)
    assert (artwork.other_answers, code.other_answers) == (1, 0)
    assert scores.perception == pytest.approx(150.0)
    assert scores.cognition == pytest.approx(125.0)
    assert scores.total == pytest.approx(275.0)
    assert list(scores.per_subtask) == ["color", "artwork", "code_reasoning"]


def test_score_mme_requires_two_questions_per_image() -> None:
    lone = MmePrediction("color", "0000.jpg", "Is it red? Please answer yes or no.", "Yes", "yes")
    with pytest.raises(BenchmarkFormatError, match="expected 2 questions"):
        score_mme([lone])


def test_official_result_files_round_trip_and_keep_each_reply_on_one_line(
    mme_root: Path, tmp_path: Path
) -> None:
    predictions = _planted_predictions(load_mme(mme_root, list(PLANTED)))
    predictions[0] = dataclasses.replace(predictions[0], prediction="Yes.\nIt is\tred.")
    results_dir = tmp_path / "results"

    written = write_official_results(results_dir, predictions)

    assert [path.name for path in written] == ["color.txt", "artwork.txt", "code_reasoning.txt"]
    color_lines = (results_dir / "color.txt").read_text().splitlines()
    assert len(color_lines) == 6
    assert color_lines[0] == "0000.jpg\t" + predictions[0].question + "\tYes\tYes. It is red."
    assert color_lines[1].split("\t")[0] == "0000.jpg"
    assert color_lines[1].endswith("\tNo\tno,")
    read_back = read_official_results(results_dir, list(PLANTED))
    assert score_mme(read_back) == score_mme(predictions)


def test_run_mme_resumes_from_the_cache_without_asking_again(mme_root: Path, tmp_path: Path) -> None:
    cache_path = tmp_path / "cache.jsonl"
    asked: list[str] = []

    def always_yes_then_crash(batch: list[tuple[bytes, str]]) -> list[str]:
        if len(asked) >= 4:
            raise RuntimeError("backend died")
        asked.extend(question for _, question in batch)
        assert all(image.startswith(b"\xff\xd8") or image.startswith(b"\x89PNG") for image, _ in batch)
        return ["Yes"] * len(batch)

    with pytest.raises(RuntimeError, match="backend died"):
        run_mme(
            mme_root,
            always_yes_then_crash,
            model_key="m",
            batch_size=4,
            cache=JsonlPredictionCache(cache_path),
            subtasks=list(PLANTED),
        )
    assert len(asked) == 4

    def always_yes(batch: list[tuple[bytes, str]]) -> list[str]:
        asked.extend(question for _, question in batch)
        return ["Yes"] * len(batch)

    results_dir = tmp_path / "results"
    scores = run_mme(
        mme_root,
        always_yes,
        model_key="m",
        batch_size=4,
        cache=JsonlPredictionCache(cache_path),
        subtasks=list(PLANTED),
        results_dir=results_dir,
    )

    assert len(asked) == 14  # the 4 cached answers were not asked for again
    # Always "Yes": half the questions right, no image fully right -> 50 per subtask.
    assert {name: s.score for name, s in scores.per_subtask.items()} == pytest.approx(
        {"color": 50.0, "artwork": 50.0, "code_reasoning": 50.0}
    )
    assert scores.total == pytest.approx(150.0)
    assert (results_dir / "artwork.txt").is_file()

    def must_not_be_called(batch: list[tuple[bytes, str]]) -> list[str]:
        raise AssertionError("everything is cached")

    again = run_mme(
        mme_root,
        must_not_be_called,
        model_key="m",
        cache=JsonlPredictionCache(cache_path),
        subtasks=list(PLANTED),
    )
    assert again == scores


def test_predict_mme_rejects_a_backend_that_drops_answers(mme_root: Path) -> None:
    items = load_mme(mme_root, ["color"])
    with pytest.raises(PredictionCountError, match="asked for 4 outputs, got 3"):
        predict_mme(items, lambda batch: ["yes"] * (len(batch) - 1), model_key="m", batch_size=4)


def _official_subtask_score(path: Path) -> float:
    """The official calculation.py's loop, restated independently: consecutive line pairs are one
    image, the prediction keeps its trailing newline, parsing looks at the first 4 characters."""
    lines = path.open(encoding="utf-8").readlines()
    pairs = [lines[i : i + 2] for i in range(0, len(lines), 2)]
    right = images_right = 0
    for pair in pairs:
        assert len(pair) == 2
        pair_right = 0
        for line in pair:
            _, _, truth, prediction = line.split("\t")
            prediction = prediction.lower()
            label = (
                prediction
                if prediction in ("yes", "no")
                else next((word for word in ("yes", "no") if word in prediction[:4]), "other")
            )
            pair_right += label == truth.lower()
        right += pair_right
        images_right += pair_right == 2
    return 100 * right / len(lines) + 100 * images_right / len(pairs)


def test_written_result_files_score_the_same_under_the_official_algorithm(
    mme_root: Path, tmp_path: Path
) -> None:
    predictions = _planted_predictions(load_mme(mme_root, list(PLANTED)))
    scores = score_mme(predictions)

    write_official_results(tmp_path, predictions)

    for subtask, subtask_score in scores.per_subtask.items():
        assert _official_subtask_score(tmp_path / f"{subtask}.txt") == pytest.approx(subtask_score.score)
