"""MME: load the official release layout, ask the model, score exactly as the official eval tool.

Scores must be comparable with published numbers, so parsing and arithmetic follow the official
``eval_tool/calculation.py`` line for line, and the official per-subtask result files can be
written for a cross-check with that script.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from services.evaluator.errors import BenchmarkFormatError
from services.evaluator.prediction_cache import PredictionCache, map_with_cache
from shared.ml.answer_matching import mme_yes_no

PERCEPTION_SUBTASKS = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
ALL_SUBTASKS = PERCEPTION_SUBTASKS + COGNITION_SUBTASKS
# Subtasks whose release folder splits images/ from questions_answers_YN/; the rest keep both side by side.
SPLIT_FOLDER_SUBTASKS = frozenset({"artwork", "celebrity", "landmark", "posters", "scene"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
QUESTIONS_PER_IMAGE = 2
BENCHMARK = "mme"


@dataclass(frozen=True, slots=True)
class MmeItem:
    """One yes/no question about one image; ``answer`` is the file's "Yes" or "No"."""

    subtask: str
    image_path: Path
    question: str
    answer: str

    @property
    def item_id(self) -> str:
        return f"{self.subtask}/{self.image_path.name}/{self.question}"


@dataclass(frozen=True, slots=True)
class MmePrediction:
    """A question with the model's raw reply: one line of an official result file."""

    subtask: str
    image_name: str
    question: str
    answer: str
    prediction: str

    @property
    def correct(self) -> bool:
        return mme_yes_no(self.prediction) == self.answer.lower()


class MmeSubtaskScore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    acc: float
    acc_plus: float
    score: float
    images: int
    other_answers: int


class MmeScores(BaseModel):
    """Per-subtask scores and the sums the paper reports (perception max 2000, cognition max 800)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_subtask: dict[str, MmeSubtaskScore]
    perception: float
    cognition: float
    total: float


def load_mme(root: Path, subtasks: Sequence[str] | None = None) -> list[MmeItem]:
    """Questions of the given subtasks (all 14 by default) from an MME_Benchmark_release_version folder."""
    names = ALL_SUBTASKS if subtasks is None else tuple(subtasks)
    _check_subtask_names(names)
    return [item for name in names for item in _load_subtask(root, name)]


def predict_mme(
    items: Sequence[MmeItem],
    answer: Callable[[list[tuple[bytes, str]]], list[str]],
    *,
    model_key: str,
    batch_size: int = 8,
    cache: PredictionCache | None = None,
) -> list[MmePrediction]:
    """The model's reply to every item, asking only for items the cache lacks."""
    replies = map_with_cache(
        [item.item_id for item in items],
        lambda index: (items[index].image_path.read_bytes(), items[index].question),
        answer,
        model_key=model_key,
        benchmark=BENCHMARK,
        batch_size=batch_size,
        cache=cache,
    )
    return [
        MmePrediction(item.subtask, item.image_path.name, item.question, item.answer, reply)
        for item, reply in zip(items, replies, strict=True)
    ]


def score_mme(predictions: Sequence[MmePrediction]) -> MmeScores:
    """Subtask score = 100 * acc + 100 * acc+, summed into perception, cognition and total."""
    _check_subtask_names({p.subtask for p in predictions})
    per_subtask = {
        name: _score_subtask(name, [p for p in predictions if p.subtask == name])
        for name in ALL_SUBTASKS
        if any(p.subtask == name for p in predictions)
    }
    perception = sum(s.score for name, s in per_subtask.items() if name in PERCEPTION_SUBTASKS)
    cognition = sum(s.score for name, s in per_subtask.items() if name in COGNITION_SUBTASKS)
    return MmeScores(
        per_subtask=per_subtask, perception=perception, cognition=cognition, total=perception + cognition
    )


def write_official_results(results_dir: Path, predictions: Sequence[MmePrediction]) -> list[Path]:
    """One ``<subtask>.txt`` per subtask, lines ``image\\tquestion\\tanswer\\tprediction``, an image's
    two lines adjacent, for the official ``calculation.py --results_dir``.

    Tabs and line breaks inside a prediction become spaces so each stays one line; a one-for-one
    swap of whitespace cannot change what the official parser reads from it.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ALL_SUBTASKS:
        rows = [p for p in predictions if p.subtask == name]
        if not rows:
            continue
        lines = [
            "\t".join((p.image_name, p.question, p.answer, _one_line(p.prediction)))
            for image_rows in _group_by_image(rows).values()
            for p in image_rows
        ]
        path = results_dir / f"{name}.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written.append(path)
    return written


def read_official_results(results_dir: Path, subtasks: Sequence[str] | None = None) -> list[MmePrediction]:
    """Predictions from official result files (ours or any other tool's), to score with ``score_mme``."""
    names = ALL_SUBTASKS if subtasks is None else tuple(subtasks)
    _check_subtask_names(names)
    predictions = []
    for name in names:
        path = results_dir / f"{name}.txt"
        if not path.is_file():
            raise BenchmarkFormatError(f"MME result file {path} not found")
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                fields = line.removesuffix("\n").split("\t")
                if len(fields) != 4:
                    raise BenchmarkFormatError(f"{path}:{number}: expected 4 tab-separated fields")
                predictions.append(MmePrediction(name, *fields))
    return predictions


def run_mme(
    root: Path,
    answer: Callable[[list[tuple[bytes, str]]], list[str]],
    *,
    model_key: str,
    batch_size: int = 8,
    cache: PredictionCache | None = None,
    subtasks: Sequence[str] | None = None,
    results_dir: Path | None = None,
) -> MmeScores:
    """Load, predict (resuming from the cache), optionally write official result files, score."""
    predictions = predict_mme(
        load_mme(root, subtasks), answer, model_key=model_key, batch_size=batch_size, cache=cache
    )
    if results_dir is not None:
        write_official_results(results_dir, predictions)
    return score_mme(predictions)


def _check_subtask_names(names: Sequence[str] | set[str]) -> None:
    unknown = sorted(set(names) - set(ALL_SUBTASKS))
    if unknown:
        raise ValueError(f"unknown MME subtasks {unknown}; known: {list(ALL_SUBTASKS)}")


def _load_subtask(root: Path, subtask: str) -> list[MmeItem]:
    folder = root / subtask
    if not folder.is_dir():
        raise BenchmarkFormatError(f"MME subtask folder {folder} not found")
    if (folder / "questions_answers_YN").is_dir():
        questions_dir, images_dir = folder / "questions_answers_YN", folder / "images"
    else:
        questions_dir = images_dir = folder
    images = _images_by_stem(images_dir)
    items = []
    for question_file in sorted(questions_dir.glob("*.txt")):
        image_path = images.get(question_file.stem)
        if image_path is None:
            raise BenchmarkFormatError(f"no image for {question_file} in {images_dir}")
        items.extend(
            MmeItem(subtask, image_path, question, answer)
            for question, answer in _read_question_file(question_file)
        )
    if not items:
        raise BenchmarkFormatError(f"no question files in {questions_dir}")
    return items


def _images_by_stem(images_dir: Path) -> dict[str, Path]:
    if not images_dir.is_dir():
        raise BenchmarkFormatError(f"MME image folder {images_dir} not found")
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise BenchmarkFormatError(f"two images named {path.stem} in {images_dir}")
            images[path.stem] = path
    return images


def _read_question_file(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 2 or fields[1].lower() not in ("yes", "no"):
            raise BenchmarkFormatError(f"{path}: expected 'question<TAB>Yes|No', got {line!r}")
        pairs.append((fields[0], fields[1]))
    if len(pairs) != QUESTIONS_PER_IMAGE:
        raise BenchmarkFormatError(f"{path}: expected {QUESTIONS_PER_IMAGE} questions, got {len(pairs)}")
    return pairs


def _score_subtask(subtask: str, predictions: Sequence[MmePrediction]) -> MmeSubtaskScore:
    images = _group_by_image(predictions)
    for image_name, rows in images.items():
        if len(rows) != QUESTIONS_PER_IMAGE:
            raise BenchmarkFormatError(
                f"MME {subtask}/{image_name}: expected {QUESTIONS_PER_IMAGE} questions, got {len(rows)}"
            )
    acc = sum(p.correct for p in predictions) / len(predictions)
    acc_plus = sum(all(p.correct for p in rows) for rows in images.values()) / len(images)
    return MmeSubtaskScore(
        acc=acc,
        acc_plus=acc_plus,
        score=100 * acc + 100 * acc_plus,
        images=len(images),
        other_answers=sum(mme_yes_no(p.prediction) == "other" for p in predictions),
    )


def _group_by_image(predictions: Sequence[MmePrediction]) -> dict[str, list[MmePrediction]]:
    groups: dict[str, list[MmePrediction]] = {}
    for prediction in predictions:
        groups.setdefault(prediction.image_name, []).append(prediction)
    return groups


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
