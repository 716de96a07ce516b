import json
from pathlib import Path

import pytest

from services.evaluator.errors import BenchmarkFormatError
from services.evaluator.greedy import load_greedy_items, run_greedy_accuracy, score_greedy
from services.evaluator.ledger_cache import LedgerPredictionCache
from shared.ledger import Ledger


def write_items(tmp_path: Path, lines: list[dict]) -> Path:
    (tmp_path / "img.png").write_bytes(b"\x89PNG fake")
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_items_resolve_relative_images_and_score_by_the_verifiable_rules(tmp_path):
    path = write_items(
        tmp_path,
        [
            {"image": "img.png", "prompt": "Red?", "reference": "yes"},
            {"image": "img.png", "prompt": "How many?", "reference": "3"},
            {"image": "img.png", "prompt": "Colour?", "reference": "red"},
        ],
    )

    items = load_greedy_items(path)
    scores = score_greedy(["Yes, it is.", "There are three cats.", "red or blue"], items)

    assert items[0].image == tmp_path / "img.png"
    assert scores.n == 3 and scores.accuracy == pytest.approx(2 / 3)
    assert scores.per_kind == {"number": 1.0, "word": 0.0, "yes_no": 1.0}


@pytest.mark.parametrize(
    "line, message",
    [
        ({"image": "missing.png", "prompt": "Red?", "reference": "yes"}, "not found"),
        (
            {"image": "img.png", "prompt": "Describe it.", "reference": "A red square on white."},
            "short answer",
        ),
        ({"image": "img.png", "prompt": "Red?"}, "reference"),
    ],
)
def test_a_bad_line_is_a_benchmark_format_error_naming_the_line(tmp_path, line, message):
    path = write_items(tmp_path, [line])

    with pytest.raises(BenchmarkFormatError, match=f"(?s)items.jsonl:1: .*{message}"):
        load_greedy_items(path)


def test_a_missing_file_is_a_benchmark_format_error(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="not found"):
        load_greedy_items(tmp_path / "nope.jsonl")


def test_answers_in_the_ledger_cache_are_not_asked_again(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    items = load_greedy_items(
        write_items(tmp_path, [{"image": "img.png", "prompt": "Red?", "reference": "yes"}])
    )
    asked: list[str] = []

    def answer(batch: list[tuple[bytes, str]]) -> list[str]:
        asked.extend(prompt for _, prompt in batch)
        return ["yes" for _ in batch]

    first = run_greedy_accuracy(items, answer, model_key="m", cache=LedgerPredictionCache(ledger))
    again = run_greedy_accuracy(items, answer, model_key="m", cache=LedgerPredictionCache(ledger))

    assert first == again and first.accuracy == 1.0
    assert asked == ["Red?"], "the second run reads the ledger instead of the model"
    assert LedgerPredictionCache(ledger).get("m", "greedy_accuracy", "0/img.png/Red?") == "yes"
