import json
from pathlib import Path

import pytest

from devkit.benchmark_fixtures import build_mmhal_fixture
from services.evaluator.errors import BenchmarkFormatError, JudgeTemplateError
from services.evaluator.mmhal import (
    QUESTION_TYPES,
    build_mmhal_judge_prompt,
    load_judge_template,
    load_mmhal,
    parse_mmhal_rating,
    run_mmhal,
    score_mmhal,
)
from services.evaluator.prediction_cache import JsonlPredictionCache


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("The answer is accurate and detailed.\nRating: 5", 5),
        ("RATING: 6", 6),
        ("rating: 0", 0),
        ("Rating: 2, it invents a dog.", 2),
        ("rating: 3 ... on reflection, rating: 4", 0),  # several different scores -> 0
        ("Rating: 3. To repeat, Rating: 3", 3),  # one score found (twice) -> that score
        ("No rating given.", 0),  # none -> 0
        ("Rating:6", 0),  # no space after the colon: "rating: 6" is not in the text -> 0
        ("Rating: 10", 1),  # plain substring rule: "rating: 10" contains "rating: 1"
    ],
)
def test_parse_mmhal_rating_follows_the_official_substring_rule(reply: str, rating: int) -> None:
    assert parse_mmhal_rating(reply) == rating


@pytest.fixture
def mmhal_paths(tmp_path: Path) -> tuple[Path, Path]:
    images_dir = tmp_path / "images"
    path = tmp_path / "response_template.json"
    build_mmhal_fixture(path, images_dir, n=16, seed=0)
    return path, images_dir


def test_load_mmhal_resolves_images_from_the_url_file_name(mmhal_paths: tuple[Path, Path]) -> None:
    path, images_dir = mmhal_paths
    items = load_mmhal(path, images_dir)

    assert len(items) == 16
    assert [item.question_type for item in items] == list(QUESTION_TYPES) * 2
    assert items[3].image_src == "https://example.invalid/mmhal/fixture-0003.jpg"
    assert items[3].image_path == images_dir / "fixture-0003.jpg"
    assert items[3].image_path.is_file()
    assert len(items[3].image_content) == 2
    assert set(json.loads(path.read_text())[0]) == {
        "question_type",
        "question_topic",
        "image_id",
        "image_src",
        "image_content",
        "question",
        "gt_answer",
        "model_answer",
    }


def test_load_mmhal_reports_a_missing_image(mmhal_paths: tuple[Path, Path]) -> None:
    path, images_dir = mmhal_paths
    (images_dir / "fixture-0005.jpg").unlink()
    with pytest.raises(BenchmarkFormatError, match="fixture-0005.jpg"):
        load_mmhal(path, images_dir)


def test_score_mmhal_matches_hand_computed_averages(mmhal_paths: tuple[Path, Path]) -> None:
    items = load_mmhal(*mmhal_paths)
    # index:  0..7 are the 8 types in order, 8..15 again.
    ratings = [6, 2, 3, 0, 5, 1, 4, 3, 4, 2, 5, 0, 5, 3, 2, 6]
    # sum = 24 + 27 = 51 -> average 51/16 = 3.1875
    # below 3: indexes 1, 3, 5, 9, 11, 14 -> 6/16 = 0.375
    # per type (i, i+8): attribute (6,4)=5, adversarial (2,2)=2, comparison (3,5)=4, counting (0,0)=0,
    # relation (5,5)=5, environment (1,3)=2, holistic (4,2)=3, other (3,6)=4.5
    scores = score_mmhal(ratings, items)

    assert scores.n == 16
    assert scores.average == pytest.approx(3.1875)
    assert scores.hallucination_rate == pytest.approx(0.375)
    assert scores.per_type == pytest.approx(
        {
            "attribute": 5.0,
            "adversarial": 2.0,
            "comparison": 4.0,
            "counting": 0.0,
            "relation": 5.0,
            "environment": 2.0,
            "holistic": 3.0,
            "other": 4.5,
        }
    )
    assert list(scores.per_type) == list(QUESTION_TYPES)


def test_default_judge_prompt_holds_every_input_and_the_rubric(mmhal_paths: tuple[Path, Path]) -> None:
    item = load_mmhal(*mmhal_paths)[0]
    prompt = build_mmhal_judge_prompt(item, "It is {red}.")

    assert ", ".join(item.image_content) in prompt
    assert item.question in prompt and item.gt_answer in prompt
    assert "It is {red}." in prompt
    assert "Rating: N" in prompt
    assert "6 = very informative with good analysis or reasoning, and no hallucination" in prompt
    assert "0 = not informative, with hallucination" in prompt


def test_user_template_file_is_filled_by_name(mmhal_paths: tuple[Path, Path], tmp_path: Path) -> None:
    item = load_mmhal(*mmhal_paths)[0]
    template_path = tmp_path / "official.txt"
    template_path.write_text("C={image_contents}|Q={question}|A={gt_answer}|M={model_answer}|{{literal}}")

    prompt = build_mmhal_judge_prompt(item, "blue", load_judge_template(template_path))

    assert (
        prompt == f"C={', '.join(item.image_content)}|Q={item.question}|A={item.gt_answer}|M=blue|{{literal}}"
    )


@pytest.mark.parametrize("placeholders", [("{}", "{}", "{}", "{}"), ("{0}", "{1}", "{2}", "{3}")])
def test_the_official_positional_template_is_filled_in_its_published_order(
    mmhal_paths: tuple[Path, Path], tmp_path: Path, placeholders: tuple[str, ...]
) -> None:
    """eval_gpt4.py calls template.format(image_content, question, gt_answer, model_answer)."""
    item = load_mmhal(*mmhal_paths)[0]
    template_path = tmp_path / "official.txt"
    template_path.write_text(
        "### Image Contents\n{}\n### Question\n{}\n### Standard Answer\n{}\n### Response\n{}\n".replace(
            "{}", "%s"
        )
        % placeholders
    )

    prompt = build_mmhal_judge_prompt(item, "blue", load_judge_template(template_path))

    assert prompt == (
        f"### Image Contents\n{', '.join(item.image_content)}\n### Question\n{item.question}\n"
        f"### Standard Answer\n{item.gt_answer}\n### Response\nblue\n"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{image_contents} {question} {gt_answer}",  # model answer missing
        "{image_contents} {question} {gt_answer} {model_answer} {image}",  # unknown name
        "{} {} {}",  # one positional placeholder short
        "{} {question} {} {}",  # positional and named mixed
        "{image_contents} {question} {gt_answer} {model_answer} {",  # stray brace
    ],
)
def test_bad_user_templates_are_refused(template: str, tmp_path: Path) -> None:
    path = tmp_path / "template.txt"
    path.write_text(template)
    with pytest.raises(JudgeTemplateError):
        load_judge_template(path)


def test_run_mmhal_scores_writes_responses_and_never_repeats_a_judge_call(
    mmhal_paths: tuple[Path, Path], tmp_path: Path
) -> None:
    items = load_mmhal(*mmhal_paths)
    cache_path = tmp_path / "cache.jsonl"
    response_path = tmp_path / "responses.json"
    judged: list[str] = []

    def answer(batch: list[tuple[bytes, str]]) -> list[str]:
        return [f"answer to {question}" for _, question in batch]

    def judge(prompts: list[str]) -> list[str]:
        first = len(judged)
        judged.extend(prompts)
        # Prompts arrive in file order, so the n-th prompt judged is item n: rate it n mod 7.
        return [f"Rating: {(first + offset) % 7}" for offset in range(len(prompts))]

    scores = run_mmhal(
        items,
        answer,
        judge,
        model_key="m",
        judge_key="gpt-4",
        batch_size=5,
        cache=JsonlPredictionCache(cache_path),
        response_path=response_path,
    )

    # ratings 0..6, 0..6, 0, 1: sum 21 + 21 + 1 = 43; below 3: 0,1,2 + 0,1,2 + 0,1 = 8 of 16
    assert scores.average == pytest.approx(43 / 16)
    assert scores.hallucination_rate == pytest.approx(0.5)
    assert scores.per_type["attribute"] == pytest.approx((0 + 1) / 2)  # indexes 0 and 8
    assert len(judged) == 16
    records = json.loads(response_path.read_text())
    assert [record["model_answer"] for record in records] == [f"answer to {item.question}" for item in items]
    assert records[0]["image_src"] == items[0].image_src

    def judge_must_not_run(prompts: list[str]) -> list[str]:
        raise AssertionError("judge replies are cached")

    again = run_mmhal(
        items,
        answer,
        judge_must_not_run,
        model_key="m",
        judge_key="gpt-4",
        cache=JsonlPredictionCache(cache_path),
    )
    assert again == scores

    other_template = "{image_contents}\n{question}\n{gt_answer}\n{model_answer}"
    run_mmhal(
        items,
        answer,
        judge,
        model_key="m",
        judge_key="gpt-4",
        template=other_template,
        cache=JsonlPredictionCache(cache_path),
    )
    assert len(judged) == 32  # a new prompt is a new judge call
