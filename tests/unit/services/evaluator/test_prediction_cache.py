from pathlib import Path

import pytest

from services.evaluator.errors import PredictionCountError
from services.evaluator.prediction_cache import JsonlPredictionCache, map_with_cache


def test_jsonl_cache_survives_reopening_and_keys_by_model_benchmark_and_item(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cache = JsonlPredictionCache(path)
    cache.put("model-a", "mme", "color/0000.jpg/Is it red?", "Yes\tit is")
    cache.put("model-b", "mme", "color/0000.jpg/Is it red?", "No")

    reopened = JsonlPredictionCache(path)

    assert reopened.get("model-a", "mme", "color/0000.jpg/Is it red?") == "Yes\tit is"
    assert reopened.get("model-b", "mme", "color/0000.jpg/Is it red?") == "No"
    assert reopened.get("model-a", "mmhal", "color/0000.jpg/Is it red?") is None


def test_a_half_written_last_line_is_dropped_and_later_writes_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    JsonlPredictionCache(path).put("m", "mme", "a", "yes")
    with path.open("a") as file:
        file.write('{"model_key": "m", "benchmark": "mme", "item_id": "b", "predic')  # crash mid-write

    cache = JsonlPredictionCache(path)
    cache.put("m", "mme", "c", "no")
    reopened = JsonlPredictionCache(path)

    assert [reopened.get("m", "mme", item) for item in ("a", "b", "c")] == ["yes", None, "no"]


def test_map_with_cache_only_builds_and_asks_for_missing_items(tmp_path: Path) -> None:
    cache = JsonlPredictionCache(tmp_path / "cache.jsonl")
    cache.put("m", "bench", "item-1", "cached")
    built: list[int] = []
    batches: list[list[str]] = []

    def build(index: int) -> str:
        built.append(index)
        return f"input-{index}"

    def call(batch: list[str]) -> list[str]:
        batches.append(batch)
        return [text.upper() for text in batch]

    outputs = map_with_cache(
        ["item-0", "item-1", "item-2", "item-3"],
        build,
        call,
        model_key="m",
        benchmark="bench",
        batch_size=2,
        cache=cache,
    )

    assert outputs == ["INPUT-0", "cached", "INPUT-2", "INPUT-3"]
    assert built == [0, 2, 3]
    assert batches == [["input-0", "input-2"], ["input-3"]]
    assert cache.get("m", "bench", "item-3") == "INPUT-3"


def test_map_with_cache_refuses_a_short_reply() -> None:
    with pytest.raises(PredictionCountError):
        map_with_cache(
            ["a", "b"], str, lambda batch: ["x"], model_key="m", benchmark="b", batch_size=2, cache=None
        )
