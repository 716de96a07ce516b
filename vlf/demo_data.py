"""The synthetic data of ``make demo``: coloured shapes whose colour a tiny model can learn.

Each image shows one circle, square or triangle in one of four colours, at a random position and
size on a white or light background. The question always asks for the colour, so the answer is a
single verifiable word: the annotator rates it by rule (``rate_with_reference``) and the evaluator
scores greedy answers against the same reference. Everything is drawn from one seed, so a rerun of
the demo writes byte-identical files.

Layout under ``out_dir``::

    images/train-0000.png ...   instructions.jsonl   (what ``vlf submit`` reads; with references)
    images/eval-0000.png ...    greedy_eval.jsonl    (unseen images for greedy accuracy)
    mme/...                     a mini MME release (color and existence subtasks)
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from devkit.benchmark_fixtures import COLOURS, SHAPES, build_mme_fixture

__all__ = [
    "COLOURS",
    "DEMO_PROMPT",
    "SHAPES",
    "DemoSet",
    "build_demo_set",
    "demo_image",
    "format_warm_up_examples",
]

DEMO_PROMPT = "What colour is the shape? Answer with one word."
IMAGE_SIZE = 64
MIN_SHAPE = 20
# Light enough that every shape colour stands out; the colour to name is never the background's.
BACKGROUNDS = ((255, 255, 255), (245, 245, 240), (235, 240, 245), (240, 240, 240))
MME_SUBTASKS = ("color", "existence")
MME_IMAGES_PER_SUBTASK = 4


@dataclass(frozen=True)
class DemoSet:
    """Where ``build_demo_set`` wrote each part."""

    root: Path
    instructions: Path
    greedy_eval: Path
    mme_root: Path
    n_train: int
    n_eval: int


def demo_image(colour: str, shape: str, seed: int) -> bytes:
    """A PNG of one ``shape`` filled with ``colour``; position, size and background follow ``seed``."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    rng = random.Random(seed)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rng.choice(BACKGROUNDS))
    size = rng.randint(MIN_SHAPE, IMAGE_SIZE - 8)
    left, top = rng.randint(2, IMAGE_SIZE - size - 2), rng.randint(2, IMAGE_SIZE - size - 2)
    box = (left, top, left + size, top + size)
    canvas = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        canvas.ellipse(box, fill=fill)
    elif shape == "square":
        canvas.rectangle(box, fill=fill)
    else:
        canvas.polygon([(left + size // 2, top), (left + size, top + size), (left, top + size)], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_demo_set(out_dir: Path, n_train: int = 96, n_eval: int = 80, seed: int = 0) -> DemoSet:
    """Write the train instructions, the unseen greedy-eval set and a mini MME under ``out_dir``.

    Colours are balanced (cycled, then shuffled), so a model answering one colour scores 1/4.
    Image paths in the JSONL files are relative to the files themselves, as ``vlf submit`` expects.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    instructions = out_dir / "instructions.jsonl"
    greedy_eval = out_dir / "greedy_eval.jsonl"
    train_rows = _write_split(out_dir, "train", n_train, rng)
    eval_rows = _write_split(out_dir, "eval", n_eval, rng)
    _write_jsonl(instructions, train_rows)
    _write_jsonl(greedy_eval, [{k: row[k] for k in ("image", "prompt", "reference")} for row in eval_rows])
    mme_root = out_dir / "mme"
    build_mme_fixture(mme_root, MME_SUBTASKS, MME_IMAGES_PER_SUBTASK, seed)
    return DemoSet(
        root=out_dir,
        instructions=instructions,
        greedy_eval=greedy_eval,
        mme_root=mme_root,
        n_train=n_train,
        n_eval=n_eval,
    )


def _write_split(out_dir: Path, split: str, count: int, rng: random.Random) -> list[dict]:
    colours = [list(COLOURS)[index % len(COLOURS)] for index in range(count)]
    rng.shuffle(colours)
    rows = []
    for index, colour in enumerate(colours):
        relative = f"images/{split}-{index:04d}.png"
        (out_dir / relative).write_bytes(demo_image(colour, rng.choice(SHAPES), rng.getrandbits(32)))
        rows.append(
            {"id": f"demo-{split}-{index:04d}", "image": relative, "prompt": DEMO_PROMPT, "reference": colour}
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def format_warm_up_examples(count: int, seed: int) -> list[tuple[bytes, str, str]]:
    """``(image, prompt, answer)`` for ``devkit.tinymodels.warm_up_format``, each answer a RANDOM colour.

    The answer is drawn independently of the drawn colour, so a model trained on these learns the
    one-word format but nothing about colours: it starts the demo at chance.
    """
    rng = random.Random(seed)
    names = list(COLOURS)
    return [
        (
            demo_image(rng.choice(names), rng.choice(SHAPES), rng.getrandbits(32)),
            DEMO_PROMPT,
            rng.choice(names),
        )
        for _ in range(count)
    ]
