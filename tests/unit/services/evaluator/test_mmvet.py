"""MM-Vet: the official release layout loads, the grader sees the official row, replies are read and
retried as ``mm-vet_evaluator.py`` does, and scores equal the official ``export_result``."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from devkit.benchmark_fixtures import build_mmvet_fixture
from services.evaluator.errors import BenchmarkFormatError
from services.evaluator.mmvet import (
    RETRY_SUFFIX,
    build_grader_prompt,
    grade_mmvet,
    load_mmvet,
    parse_mmvet_score,
    run_mmvet,
    score_mmvet,
)
from services.evaluator.prediction_cache import JsonlPredictionCache


@pytest.fixture
def mmvet_root(tmp_path: Path) -> Path:
    build_mmvet_fixture(tmp_path / "mm-vet", n=12, seed=0)
    return tmp_path / "mm-vet"


def test_the_release_layout_loads_with_images_and_capabilities(mmvet_root: Path) -> None:
    items = load_mmvet(mmvet_root)

    assert [item.item_id for item in items] == [f"v1_{i}" for i in range(12)]
    assert (
        items[2].capabilities == ("ocr", "math") and items[2].image_path == mmvet_root / "images" / "v1_2.png"
    )
    assert all(item.image_path.is_file() for item in items)


def test_a_missing_image_or_file_is_a_format_error(mmvet_root: Path, tmp_path: Path) -> None:
    (mmvet_root / "images" / "v1_3.png").unlink()
    with pytest.raises(BenchmarkFormatError, match="v1_3"):
        load_mmvet(mmvet_root)
    with pytest.raises(BenchmarkFormatError, match="not found"):
        load_mmvet(tmp_path / "nowhere")


def test_the_grader_prompt_is_the_official_row_after_the_prompt(mmvet_root: Path) -> None:
    item = load_mmvet(mmvet_root)[3]  # answer "<shape> <AND> <shape>"
    left, right = item.answer.split(" <AND> ")

    prompt = build_grader_prompt(item, "A circle and a square.", "PROMPT")
    retry = build_grader_prompt(item, "A circle and a square.", "PROMPT", retry=True)

    assert prompt == f"PROMPT\n{item.question} | {left}  <AND>  {right} | A circle and a square. | "
    assert retry == prompt + "\nPredict the correctness of the answer (digit): " and retry.endswith(
        RETRY_SUFFIX
    )


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("0.7", 0.7),
        ("1.0\n", 1.0),
        ("0.4 because", 0.4),
        (".5", 0.5),
        ("0", 0.0),
        ("Correctness: 0.5", None),
        ("0.5.", None),
        ("1.1", None),
        ("-0.1", None),
        ("nan", None),
        ("", None),
    ],
)
def test_a_reply_is_read_as_the_official_script_reads_it(reply: str, score: float | None) -> None:
    assert parse_mmvet_score(reply) == score


class ScriptedGrader:
    """Replies per question, in order of asking; records every (prompt, temperature) it was sent."""

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self._replies = {question: list(answers) for question, answers in replies.items()}
        self.calls: list[tuple[str, float]] = []

    def __call__(self, prompts: list[str], temperature: float) -> list[str]:
        self.calls.extend((prompt, temperature) for prompt in prompts)
        return [self._replies[self._question(prompt)].pop(0) for prompt in prompts]

    def _question(self, prompt: str) -> str:
        return next(question for question in self._replies if f"\n{question} | " in prompt)


def test_unreadable_replies_are_asked_again_then_score_zero(mmvet_root: Path, tmp_path: Path) -> None:
    items = load_mmvet(mmvet_root)[:3]
    items = [item.__class__(**{**_fields(item), "question": f"q{i}"}) for i, item in enumerate(items)]
    grader = ScriptedGrader(
        {"q0": ["0.8"], "q1": ["I think", "0.3"], "q2": ["well", "hmm", "no", "maybe", "sure", "1.0"]}
    )
    cache = JsonlPredictionCache(tmp_path / "cache.jsonl")

    grades = grade_mmvet(items, ["a", "b", "c"], grader, key="m|j", prompt="P", cache=cache)

    assert grades == [[0.8], [0.3], [0.0]]
    asked_q2 = [(prompt.endswith(RETRY_SUFFIX), t) for prompt, t in grader.calls if "\nq2 | " in prompt]
    assert asked_q2 == [(False, 0.0), (True, 0.0), (True, 0.5), (True, 1.0), (True, 1.5)]
    assert len(grader.calls) == 1 + 2 + 5
    again = ScriptedGrader({"q0": [], "q1": [], "q2": []})
    assert grade_mmvet(items, ["a", "b", "c"], again, key="m|j", prompt="P", cache=cache) == grades
    assert again.calls == [], "every reply, retries included, comes from the cache on a rerun"


def _fields(item) -> dict:
    return {name: getattr(item, name) for name in item.__slots__}


def _official_export(grades: list[list[float]], records: dict[str, dict], runs: int) -> dict:
    """The official ``load_metadata`` + ``export_result`` arithmetic, restated with numpy as it is
    written there (integration names sorted, see the module docstring)."""
    counter = Counter()
    cap_set_list, cap_set_counter = [], []
    for value in records.values():
        cap = set(value["capability"])
        counter.update(cap)
        if cap not in cap_set_list:
            cap_set_list.append(cap)
            cap_set_counter.append(1)
        else:
            cap_set_counter[cap_set_list.index(cap)] += 1
    columns = [k for k, _ in counter.most_common()] + ["total"]
    cap_socres = {k: [0.0] * runs for k in columns}
    cap_socres2 = {"_".join(sorted(c)): [0.0] * runs for c in cap_set_list}
    counter2 = {"_".join(sorted(c)): n for c, n in zip(cap_set_list, cap_set_counter, strict=True)}
    counter["total"] = len(records)
    for (_, value), item_grades in zip(records.items(), grades, strict=True):
        for i in range(runs):
            score = item_grades[i]
            caps = set(value["capability"])
            for c in caps:
                cap_socres[c][i] += score
            cap_socres["total"][i] += score
            cap_socres2["_".join(sorted(caps))][i] += score
    for k, v in cap_socres.items():
        cap_socres[k] = np.array(v) / counter[k] * 100
    std = round(cap_socres["total"].std(), 1)
    runs_list = [float(x) for x in np.round(cap_socres["total"].copy(), 1)]
    means = {k: round(v.mean(), 1) for k, v in cap_socres.items()}
    integrations = {k: round(np.mean(np.array(v) / counter2[k] * 100), 1) for k, v in cap_socres2.items()}
    return {"means": means, "integrations": integrations, "std": std, "runs": runs_list}


@pytest.mark.parametrize("runs", [1, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_the_official_export_result(mmvet_root: Path, runs: int, seed: int) -> None:
    records = json.loads((mmvet_root / "mm-vet.json").read_text())
    items = load_mmvet(mmvet_root)
    rng = random.Random(seed)
    grades = [[rng.randint(0, 10) / 10 for _ in range(runs)] for _ in items]

    scores = score_mmvet(grades, items)
    official = _official_export(grades, records, runs)

    assert scores.total == official["means"]["total"]
    assert scores.per_capability == {k: v for k, v in official["means"].items() if k != "total"}
    assert list(scores.per_capability) == [k for k in official["means"] if k != "total"]
    assert scores.per_integration == official["integrations"]
    assert (scores.std, scores.run_totals) == (official["std"], official["runs"])


def test_planted_grades_give_hand_computed_scores(mmvet_root: Path) -> None:
    items = load_mmvet(mmvet_root)  # 12 items: rec, ocr, ocr+math, rec+spat, three times each
    grades = [[1.0], [0.5], [0.0], [0.4]] * 3

    scores = score_mmvet(grades, items)

    # total 3 * (1.0 + 0.5 + 0.0 + 0.4) / 12 = 47.5; rec (1.0, 0.4) x3 = 70.0; ocr (0.5, 0.0) x3 = 25.0
    assert scores.total == 47.5 and scores.n == 12
    assert scores.per_capability == {"rec": 70.0, "ocr": 25.0, "math": 0.0, "spat": 40.0}
    assert scores.per_integration == {"rec": 100.0, "ocr": 50.0, "math_ocr": 0.0, "rec_spat": 40.0}
    assert scores.std == 0.0 and scores.run_totals == [47.5]


def test_a_run_answers_grades_and_writes_the_official_results_file(mmvet_root: Path, tmp_path: Path) -> None:
    items = load_mmvet(mmvet_root)[:4]
    asked: list[str] = []

    def answer(batch: list[tuple[bytes, str]]) -> list[str]:
        asked.extend(question for _, question in batch)
        return [f"answer to {question}" for _, question in batch]

    scores = run_mmvet(
        items,
        answer,
        lambda prompts, _temperature: ["0.6"] * len(prompts),
        model_key="m",
        judge_key="j",
        response_path=tmp_path / "results" / "model.json",
    )

    assert scores.total == 60.0 and asked == [item.question for item in items]
    written = json.loads((tmp_path / "results" / "model.json").read_text())
    assert written == {item.item_id: f"answer to {item.question}" for item in items}
