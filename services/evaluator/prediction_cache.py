"""Cache of model outputs per benchmark item, so a crashed evaluation resumes without regenerating.

Generation and paid judge calls are the expensive part of an evaluation; scoring is cheap. Every
output is therefore stored as soon as its batch returns, keyed by (model_key, benchmark, item_id),
and a rerun only asks for the items the cache lacks.
"""

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar, cast

from services.evaluator.errors import PredictionCountError

InputT = TypeVar("InputT")


class PredictionCache(Protocol):
    """Where finished outputs live between runs; a ledger-backed version fits the same shape."""

    def get(self, model_key: str, benchmark: str, item_id: str) -> str | None: ...

    def put(self, model_key: str, benchmark: str, item_id: str, prediction: str) -> None: ...


class JsonlPredictionCache:
    """Append-only JSON-lines file: one line per output, flushed as written.

    A crash can leave a half-written last line; it is dropped on open (its item is simply
    generated again), while a broken line in the middle means the file is corrupt and raises.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._entries: dict[tuple[str, str, str], str] = {}
        if path.exists():
            self._load()

    def get(self, model_key: str, benchmark: str, item_id: str) -> str | None:
        return self._entries.get((model_key, benchmark, item_id))

    def put(self, model_key: str, benchmark: str, item_id: str, prediction: str) -> None:
        record = {
            "model_key": model_key,
            "benchmark": benchmark,
            "item_id": item_id,
            "prediction": prediction,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._entries[(model_key, benchmark, item_id)] = prediction

    def _load(self) -> None:
        text = self._path.read_text(encoding="utf-8")
        complete, _, partial_tail = text.rpartition("\n")
        if partial_tail:
            self._path.write_text(complete + "\n" if complete else "", encoding="utf-8")
        for line in complete.splitlines():
            if line.strip():
                record = json.loads(line)
                key = (record["model_key"], record["benchmark"], record["item_id"])
                self._entries[key] = record["prediction"]


def map_with_cache(
    item_ids: Sequence[str],
    build_input: Callable[[int], InputT],
    call: Callable[[list[InputT]], list[str]],
    *,
    model_key: str,
    benchmark: str,
    batch_size: int,
    cache: PredictionCache | None,
) -> list[str]:
    """Outputs for every item, calling ``call`` in batches only for items the cache lacks.

    ``build_input(i)`` is called lazily per batch so a benchmark's images are never all in memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    outputs: list[str | None] = [
        cache.get(model_key, benchmark, item_id) if cache is not None else None for item_id in item_ids
    ]
    missing = [index for index, output in enumerate(outputs) if output is None]
    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        replies = call([build_input(index) for index in batch])
        if len(replies) != len(batch):
            raise PredictionCountError(f"{benchmark}: asked for {len(batch)} outputs, got {len(replies)}")
        for index, reply in zip(batch, replies, strict=True):
            outputs[index] = reply
            if cache is not None:
                cache.put(model_key, benchmark, item_ids[index], reply)
    return cast(list[str], outputs)
