"""MM-Vet: ask the model, have a text-only grader score each answer 0.0-1.0, score as the official script.

The grader prompt is our own few-shot wording of the rubric; a user who needs numbers comparable
with published ones supplies the official prompt (the text before the question row of
``mm-vet_evaluator.py``) as a file. Everything after it follows the official script: the row
``question | ground truth | prediction | `` with ``<AND>``/``<OR>`` spaced out, three tokens at
temperature 0, the first space-separated word of the reply read as a number in [0, 1], up to four
more tries with "Predict the correctness of the answer (digit): " appended at temperatures 0, 0.5,
1.0 and 1.5, and 0.0 when none of five replies is a score. The official script asks a sixth time
and discards that reply; we skip that call, which changes no score. Two choices are ours: a reply
"nan" is not a score (the official ``float()`` lets it through and the total becomes nan), and a
capability integration is named by its capabilities sorted (the official name follows a set's
iteration order, which changes from run to run).
"""

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from services.evaluator.errors import BenchmarkFormatError, JudgeTemplateError
from services.evaluator.prediction_cache import PredictionCache, map_with_cache

BENCHMARK = "mmvet"
JUDGE_BENCHMARK = "mmvet-judge"
RECORD_KEYS = ("imagename", "capability", "question", "answer")
# The six core capabilities, most frequent first in the release (the official table's order).
CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
GRADER_MAX_TOKENS = 3
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
# Temperature of each grader call: the first with the plain prompt, the rest with RETRY_SUFFIX.
TRY_TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.5)
DECIMAL_PLACES = 1

DEFAULT_GRADER_PROMPT = """\
Score how correct an AI model's answer is against the ground truth, from 0.0 to 1.0 in steps of \
0.1 (0.0: wrong, 1.0: fully right). In a ground truth, <AND> joins parts that must all appear in \
the answer for full marks, and <OR> joins alternatives of which any one is enough. Fill in only the \
score in the last column of the last row.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
How many apples are on the plate? | 3 | There are three apples. | 1.0
How many apples are on the plate? | 3 | I can see five apples. | 0.0
Which two colours does the flag show? | red <AND> white | The flag is red. | 0.5
Which two colours does the flag show? | red <AND> white | It is red and white. | 1.0
What animal is this? | cat <OR> kitten | This is a small kitten. | 1.0
Why is this picture funny? | The dog wears sunglasses and sits at a desk like an office worker, \
which is unexpected for a dog. | A dog is wearing sunglasses. | 0.4
"""

Grader = Callable[[list[str], float], list[str]]


@dataclass(frozen=True, slots=True)
class MmvetItem:
    """One record of ``mm-vet.json``, its image resolved to a local path."""

    item_id: str
    image_path: Path
    capabilities: tuple[str, ...]
    question: str
    answer: str


class MmvetScores(BaseModel):
    """Scores x100 rounded as published: the total, per capability and per capability integration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total: float
    per_capability: dict[str, float]
    per_integration: dict[str, float]
    std: float
    run_totals: list[float]
    n: int


def load_mmvet(root: Path) -> list[MmvetItem]:
    """Records of the official release folder: ``mm-vet.json`` keyed by id, images in ``images/``."""
    path = root / "mm-vet.json"
    if not path.is_file():
        raise BenchmarkFormatError(f"MM-Vet file {path} not found")
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, dict) or not records:
        raise BenchmarkFormatError(f"{path}: expected a JSON object of records keyed by id")
    return [_item_from_record(item_id, record, root, path) for item_id, record in records.items()]


def load_grader_prompt(path: Path) -> str:
    """A user's grader prompt (e.g. the official one), used verbatim before the question row."""
    prompt = path.read_text(encoding="utf-8")
    if not prompt.strip():
        raise JudgeTemplateError(f"MM-Vet grader prompt {path} is empty")
    return prompt


def build_grader_prompt(item: MmvetItem, prediction: str, prompt: str, retry: bool = False) -> str:
    """The official layout: prompt, newline, the row with an empty correctness cell."""
    ground_truth = item.answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    row = " | ".join([item.question, ground_truth, prediction, ""])
    return prompt + "\n" + row + (RETRY_SUFFIX if retry else "")


def parse_mmvet_score(reply: str) -> float | None:
    """The first space-separated word of the reply as a number in [0, 1], or None (try again)."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def score_mmvet(grades: Sequence[Sequence[float]], items: Sequence[MmvetItem]) -> MmvetScores:
    """``grades[i][run]`` is item i's score in that run; sums, means, std and rounding in the order
    and arithmetic of the official ``export_result`` (numpy's, for fewer than eight runs)."""
    if len(grades) != len(items):
        raise ValueError(f"{len(grades)} grades for {len(items)} items")
    if not items:
        raise ValueError("no MM-Vet grades to score")
    runs = len(grades[0])
    if runs < 1 or any(len(item_grades) != runs for item_grades in grades):
        raise ValueError("every MM-Vet item needs a grade for each run")
    capability_counts = Counter(c for item in items for c in set(item.capabilities))
    integration_counts = Counter(_integration(item) for item in items)
    sums = {name: [0.0] * runs for name in [*capability_counts, "total"]}
    integration_sums = {name: [0.0] * runs for name in integration_counts}
    for item, item_grades in zip(items, grades, strict=True):
        for run, score in enumerate(item_grades):
            for capability in set(item.capabilities):
                sums[capability][run] += score
            sums["total"][run] += score
            integration_sums[_integration(item)][run] += score
    counts = {**capability_counts, "total": len(items)}
    percent = {name: [total / counts[name] * 100 for total in totals] for name, totals in sums.items()}
    return MmvetScores(
        total=_rounded(_mean(percent["total"])),
        per_capability={name: _rounded(_mean(percent[name])) for name, _ in capability_counts.most_common()},
        per_integration={
            name: _rounded(_mean([total / count * 100 for total in integration_sums[name]]))
            for name, count in integration_counts.most_common()
        },
        std=_rounded(_std(percent["total"])),
        run_totals=[_rounded(total) for total in percent["total"]],
        n=len(items),
    )


def write_mmvet_responses(path: Path, items: Sequence[MmvetItem], predictions: Sequence[str]) -> None:
    """The official results file (``{id: answer}``), for the official grader script."""
    records = {item.item_id: prediction for item, prediction in zip(items, predictions, strict=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def grade_mmvet(
    items: Sequence[MmvetItem],
    predictions: Sequence[str],
    grader: Grader,
    *,
    key: str,
    prompt: str,
    runs: int = 1,
    cache: PredictionCache | None = None,
    batch_size: int = 8,
) -> list[list[float]]:
    """Each item's score in each run, asking again (retry prompt, rising temperature) only for the
    replies that are not a score. Every reply is cached under its run, try and prompt hash."""
    grades: list[list[float | None]] = [[None] * runs for _ in items]
    pending = [(index, run) for index in range(len(items)) for run in range(runs)]
    for attempt, temperature in enumerate(TRY_TEMPERATURES):
        if not pending:
            break
        prompts = [
            build_grader_prompt(items[i], predictions[i], prompt, retry=attempt > 0) for i, _ in pending
        ]
        keys = [
            f"{items[i].item_id}/run{run}/try{attempt}/{_digest(text)}"
            for (i, run), text in zip(pending, prompts, strict=True)
        ]
        replies = _ask(grader, prompts, keys, temperature, key=key, cache=cache, batch_size=batch_size)
        still_pending = []
        for (index, run), reply in zip(pending, replies, strict=True):
            grades[index][run] = parse_mmvet_score(reply)
            if grades[index][run] is None:
                still_pending.append((index, run))
        pending = still_pending
    return [[0.0 if grade is None else grade for grade in item_grades] for item_grades in grades]


def _ask(
    grader: Grader,
    prompts: list[str],
    keys: list[str],
    temperature: float,
    *,
    key: str,
    cache: PredictionCache | None,
    batch_size: int,
) -> list[str]:
    return map_with_cache(
        keys,
        lambda position: prompts[position],
        lambda batch: grader(batch, temperature),
        model_key=key,
        benchmark=JUDGE_BENCHMARK,
        batch_size=batch_size,
        cache=cache,
    )


def run_mmvet(
    items: Sequence[MmvetItem],
    answer: Callable[[list[tuple[bytes, str]]], list[str]],
    grader: Grader,
    *,
    model_key: str,
    judge_key: str,
    cache: PredictionCache | None = None,
    batch_size: int = 8,
    prompt: str = DEFAULT_GRADER_PROMPT,
    runs: int = 1,
    response_path: Path | None = None,
) -> MmvetScores:
    """Answer, grade and score; answers and grader replies are cached so a rerun repeats no call."""
    predictions = map_with_cache(
        [item.item_id for item in items],
        lambda index: (items[index].image_path.read_bytes(), items[index].question),
        answer,
        model_key=model_key,
        benchmark=BENCHMARK,
        batch_size=batch_size,
        cache=cache,
    )
    if response_path is not None:
        write_mmvet_responses(response_path, items, predictions)
    grades = grade_mmvet(
        items,
        predictions,
        grader,
        key=f"{model_key}|{judge_key}",
        prompt=prompt,
        runs=runs,
        cache=cache,
        batch_size=batch_size,
    )
    return score_mmvet(grades, items)


def _item_from_record(item_id: str, record: object, root: Path, path: Path) -> MmvetItem:
    if not isinstance(record, dict):
        raise BenchmarkFormatError(f"{path}: record {item_id} is not an object")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise BenchmarkFormatError(f"{path}: record {item_id} lacks {missing}")
    capabilities = record["capability"]
    if not isinstance(capabilities, list) or not capabilities:
        raise BenchmarkFormatError(f"{path}: record {item_id}: capability must be a non-empty list")
    image_path = root / "images" / str(record["imagename"])
    if not image_path.is_file():
        raise BenchmarkFormatError(f"{path}: record {item_id}: image {image_path} not found")
    return MmvetItem(
        item_id=item_id,
        image_path=image_path,
        capabilities=tuple(str(c) for c in capabilities),
        question=str(record["question"]),
        answer=str(record["answer"]),
    )


def _integration(item: MmvetItem) -> str:
    return "_".join(sorted(set(item.capabilities)))


def _mean(values: Sequence[float]) -> float:
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


def _std(values: Sequence[float]) -> float:
    """Population standard deviation, as ``numpy.std``."""
    mean = _mean(values)
    return math.sqrt(_mean([(value - mean) * (value - mean) for value in values]))


def _rounded(value: float) -> float:
    """As ``round(numpy.float64, 1)`` rounds: scale, round half to even, scale back."""
    scale = 10.0**DECIMAL_PLACES
    return round(value * scale) / scale


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
