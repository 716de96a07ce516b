"""Synthetic benchmark data in the official MME, MMHal-Bench and MM-Vet layouts.

The real benchmarks cannot be downloaded here, and a tiny demo model cannot learn them; these
builders draw simple images (coloured shapes, counts, words, sums) whose questions such a model
can learn, written in exactly the files and folders the loaders expect from the real release.
"""

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from services.evaluator.mme import ALL_SUBTASKS, COGNITION_SUBTASKS, SPLIT_FOLDER_SUBTASKS
from services.evaluator.mmhal import QUESTION_TYPES

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("CAT", "SUN", "MAP", "BOX", "PEN", "CUP")
IMAGE_SIZE = 96
BACKGROUND = (255, 255, 255)
MME_SUFFIX = " Please answer yes or no."

QuestionPair = list[tuple[str, str]]
Drawing = tuple[Image.Image, QuestionPair]


def build_mme_fixture(
    root: Path, subtasks: Sequence[str], images_per_subtask: int, seed: int
) -> dict[str, dict[str, list[list[str]]]]:
    """Write images and question files under ``root`` as in MME_Benchmark_release_version.

    Returns the ground truth ``{subtask: {image_name: [[question, "Yes"], [question, "No"]]}}``:
    like the release, each image has one question answered Yes, then one answered No.
    Perception images are .jpg and cognition images .png, as in the release.
    """
    unknown = sorted(set(subtasks) - set(ALL_SUBTASKS))
    if unknown:
        raise ValueError(f"unknown MME subtasks {unknown}")
    rng = random.Random(seed)
    truth: dict[str, dict[str, list[list[str]]]] = {}
    for subtask in subtasks:
        draw = _MME_DRAWINGS.get(subtask, _draw_colour)
        truth[subtask] = {}
        for index in range(images_per_subtask):
            image, questions = draw(rng)
            image_path, questions_path = _mme_paths(root, subtask, f"{index:04d}")
            image_path.parent.mkdir(parents=True, exist_ok=True)
            questions_path.parent.mkdir(parents=True, exist_ok=True)
            image.save(image_path)
            questions_path.write_text(
                "".join(f"{question}{MME_SUFFIX}\t{answer}\n" for question, answer in questions),
                encoding="utf-8",
            )
            truth[subtask][image_path.name] = [[f"{q}{MME_SUFFIX}", a] for q, a in questions]
    return truth


def build_mmhal_fixture(path: Path, images_dir: Path, n: int = 16, seed: int = 0) -> list[dict]:
    """Write ``n`` records in the official MMHal-Bench JSON layout (``model_answer`` empty, as in
    the official response template) and their images; returns the records."""
    rng = random.Random(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        image_id = f"fixture-{index:04d}"
        scene = _two_shape_scene(rng)
        scene.image.save(images_dir / f"{image_id}.jpg")
        question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        question, gt_answer = _mmhal_question(question_type, scene)
        records.append(
            {
                "question_type": question_type,
                "question_topic": "Shapes",
                "image_id": image_id,
                "image_src": f"https://example.invalid/mmhal/{image_id}.jpg",
                "image_content": [
                    f"{scene.colours[0]} {scene.shapes[0]}",
                    f"{scene.colours[1]} {scene.shapes[1]}",
                ],
                "question": question,
                "gt_answer": gt_answer,
                "model_answer": "",
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return records


def build_mmvet_fixture(root: Path, n: int = 12, seed: int = 0) -> dict[str, dict]:
    """Write ``n`` records in the official MM-Vet layout (``mm-vet.json`` keyed ``v1_<i>``, images in
    ``images/``), cycling through questions of one or two capabilities; returns the records."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = {}
    for index in range(n):
        image, capabilities, question, answer = _MMVET_DRAWINGS[index % len(_MMVET_DRAWINGS)](rng)
        image_name = f"v1_{index}.png"
        image.save(root / "images" / image_name)
        records[f"v1_{index}"] = {
            "imagename": image_name,
            "capability": capabilities,
            "question": question,
            "answer": answer,
        }
    (root / "mm-vet.json").write_text(json.dumps(records, indent=4) + "\n", encoding="utf-8")
    return records


def _mmvet_colour(rng: random.Random) -> tuple[Image.Image, list[str], str, str]:
    scene = _two_shape_scene(rng)
    return scene.image, ["rec"], f"What color is the {scene.shapes[0]}?", scene.colours[0]


def _mmvet_word(rng: random.Random) -> tuple[Image.Image, list[str], str, str]:
    image, canvas = _blank()
    word = rng.choice(WORDS)
    canvas.text((30, 40), word, fill=(0, 0, 0))
    return image, ["ocr"], "What word is written in the image?", word


def _mmvet_sum(rng: random.Random) -> tuple[Image.Image, list[str], str, str]:
    image, canvas = _blank()
    first, second = rng.randint(1, 9), rng.randint(1, 9)
    canvas.text((25, 40), f"{first} + {second} =", fill=(0, 0, 0))
    return image, ["ocr", "math"], "What is the answer to the expression?", str(first + second)


def _mmvet_shapes(rng: random.Random) -> tuple[Image.Image, list[str], str, str]:
    scene = _two_shape_scene(rng)
    question = "Which shape is on the left and which on the right?"
    return scene.image, ["rec", "spat"], question, f"{scene.shapes[0]} <AND> {scene.shapes[1]}"


_MMVET_DRAWINGS = (_mmvet_colour, _mmvet_word, _mmvet_sum, _mmvet_shapes)


def _mme_paths(root: Path, subtask: str, stem: str) -> tuple[Path, Path]:
    suffix = ".png" if subtask in COGNITION_SUBTASKS else ".jpg"
    folder = root / subtask
    if subtask in SPLIT_FOLDER_SUBTASKS:
        return folder / "images" / f"{stem}{suffix}", folder / "questions_answers_YN" / f"{stem}.txt"
    return folder / f"{stem}{suffix}", folder / f"{stem}.txt"


def _blank() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    return image, ImageDraw.Draw(image)


def _draw_shape(canvas: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: str) -> None:
    fill = COLOURS[colour]
    left, top, right, bottom = box
    if shape == "circle":
        canvas.ellipse(box, fill=fill)
    elif shape == "square":
        canvas.rectangle(box, fill=fill)
    else:
        canvas.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)


def _other(rng: random.Random, options: Sequence[str], excluded: str) -> str:
    return rng.choice([option for option in options if option != excluded])


def _draw_colour(rng: random.Random) -> Drawing:
    image, canvas = _blank()
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    _draw_shape(canvas, shape, (20, 20, 76, 76), colour)
    wrong = _other(rng, list(COLOURS), colour)
    return image, [(f"Is the shape {colour}?", "Yes"), (f"Is the shape {wrong}?", "No")]


def _draw_existence(rng: random.Random) -> Drawing:
    image, canvas = _blank()
    shape = rng.choice(SHAPES)
    _draw_shape(canvas, shape, (20, 20, 76, 76), rng.choice(list(COLOURS)))
    absent = _other(rng, SHAPES, shape)
    return image, [(f"Is there a {shape} in the image?", "Yes"), (f"Is there a {absent} in the image?", "No")]


def _draw_count(rng: random.Random) -> Drawing:
    image, canvas = _blank()
    count = rng.randint(1, 4)
    colour = rng.choice(list(COLOURS))
    for slot in range(count):
        left = 6 + slot * 22
        _draw_shape(canvas, "circle", (left, 38, left + 18, 56), colour)
    wrong = _other(rng, ["1", "2", "3", "4"], str(count))
    return image, [
        (f"Does the image contain exactly {count} {_plural(count)}?", "Yes"),
        (f"Does the image contain exactly {wrong} {_plural(int(wrong))}?", "No"),
    ]


def _plural(count: int) -> str:
    return "shape" if count == 1 else "shapes"


def _draw_position(rng: random.Random) -> Drawing:
    image, canvas = _blank()
    shape, side = rng.choice(SHAPES), rng.choice(("left", "right"))
    left = 6 if side == "left" else 58
    _draw_shape(canvas, shape, (left, 30, left + 32, 62), rng.choice(list(COLOURS)))
    other_side = "right" if side == "left" else "left"
    return image, [
        (f"Is the {shape} on the {side} side of the image?", "Yes"),
        (f"Is the {shape} on the {other_side} side of the image?", "No"),
    ]


def _draw_word(rng: random.Random) -> Drawing:
    image, canvas = _blank()
    word = rng.choice(WORDS)
    canvas.text((30, 40), word, fill=(0, 0, 0))
    wrong = _other(rng, WORDS, word)
    return image, [
        (f'Does the image show the word "{word}"?', "Yes"),
        (f'Does the image show the word "{wrong}"?', "No"),
    ]


def _draw_sum(rng: random.Random) -> Drawing:
    image, canvas = _blank()
    first, second = rng.randint(1, 9), rng.randint(1, 9)
    canvas.text((25, 40), f"{first} + {second} =", fill=(0, 0, 0))
    wrong = first + second + rng.choice((-2, -1, 1, 2))
    return image, [
        (f"Is the answer to the expression in the image {first + second}?", "Yes"),
        (f"Is the answer to the expression in the image {wrong}?", "No"),
    ]


# Subtasks without a drawing of their own (posters, celebrity, ...) get colour questions.
_MME_DRAWINGS: dict[str, Callable[[random.Random], Drawing]] = {
    "existence": _draw_existence,
    "count": _draw_count,
    "position": _draw_position,
    "color": _draw_colour,
    "OCR": _draw_word,
    "numerical_calculation": _draw_sum,
}


@dataclass(frozen=True, slots=True)
class _Scene:
    """Two shapes side by side (``big`` = index of the larger): what MMHal questions are written from."""

    image: Image.Image
    shapes: tuple[str, str]
    colours: tuple[str, str]
    big: int


def _two_shape_scene(rng: random.Random) -> _Scene:
    image, canvas = _blank()
    first_shape, second_shape = rng.sample(SHAPES, 2)
    first_colour, second_colour = rng.sample(list(COLOURS), 2)
    big = rng.randint(0, 1)
    for slot in range(2):
        size = 36 if slot == big else 20
        left = 6 if slot == 0 else 52
        box = (left, 48 - size // 2, left + size, 48 + size // 2)
        _draw_shape(canvas, (first_shape, second_shape)[slot], box, (first_colour, second_colour)[slot])
    return _Scene(image, (first_shape, second_shape), (first_colour, second_colour), big)


def _mmhal_question(question_type: str, scene: _Scene) -> tuple[str, str]:
    (first, second), (first_colour, second_colour) = scene.shapes, scene.colours
    absent = next(shape for shape in SHAPES if shape not in scene.shapes)
    bigger = scene.shapes[scene.big]
    questions = {
        "attribute": (f"What color is the {first}?", f"The {first} is {first_colour}."),
        "adversarial": (f"What color is the {absent}?", f"There is no {absent} in the image."),
        "comparison": (f"Which is larger, the {first} or the {second}?", f"The {bigger} is larger."),
        "counting": ("How many shapes are in the image?", "There are two shapes."),
        "relation": (
            f"Where is the {first} relative to the {second}?",
            f"The {first} is left of the {second}.",
        ),
        "environment": ("What color is the background?", "The background is white."),
        "holistic": (
            "Describe the image.",
            f"A {first_colour} {first} and a {second_colour} {second} on a white background.",
        ),
        "other": ("Which shapes are in the image?", f"A {first} and a {second}."),
    }
    return questions[question_type]
