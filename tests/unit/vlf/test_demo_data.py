"""The demo set is reproducible from its seed and written in the format ``vlf submit`` reads."""

import io
import json
from collections import Counter

from PIL import Image

from vlf.demo_data import COLOURS, DEMO_PROMPT, build_demo_set, demo_image, format_warm_up_examples
from vlf.submit import SubmitRecord


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path):
    first = build_demo_set(tmp_path / "a", n_train=8, n_eval=4, seed=3)
    second = build_demo_set(tmp_path / "b", n_train=8, n_eval=4, seed=3)
    other = build_demo_set(tmp_path / "c", n_train=8, n_eval=4, seed=4)

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(first.root) == files(second.root)
    assert files(first.root) != files(other.root)


def test_instructions_are_submit_records_with_decodable_images_and_balanced_colours(tmp_path):
    demo = build_demo_set(tmp_path, n_train=12, n_eval=8, seed=0)
    rows = read_jsonl(demo.instructions)

    assert len(rows) == 12
    assert len({row["id"] for row in rows}) == 12
    for row in rows:
        record = SubmitRecord.model_validate(row)
        assert record.prompt == DEMO_PROMPT
        assert record.reference in COLOURS
        image = Image.open(demo.instructions.parent / record.image)
        assert image.format == "PNG"
        image.convert("RGB").load()
    assert Counter(row["reference"] for row in rows) == {colour: 3 for colour in COLOURS}


def test_greedy_eval_holds_unseen_images_with_prompt_and_reference(tmp_path):
    demo = build_demo_set(tmp_path, n_train=8, n_eval=8, seed=0)
    train_images = {(tmp_path / row["image"]).read_bytes() for row in read_jsonl(demo.instructions)}
    rows = read_jsonl(demo.greedy_eval)

    assert len(rows) == 8
    assert all(set(row) == {"image", "prompt", "reference"} for row in rows)
    assert not train_images & {(tmp_path / row["image"]).read_bytes() for row in rows}


def test_mini_mme_has_the_color_and_existence_subtasks(tmp_path):
    demo = build_demo_set(tmp_path, n_train=4, n_eval=4, seed=0)

    assert sorted(p.name for p in demo.mme_root.iterdir()) == ["color", "existence"]
    assert list((demo.mme_root / "color").glob("*.txt"))


def test_the_shape_is_drawn_in_the_named_colour():
    image = Image.open(io.BytesIO(demo_image("blue", "square", seed=7))).convert("RGB")

    assert image.size == (64, 64)
    assert COLOURS["blue"] in {colour for _, colour in image.getcolors(64 * 64)}


def test_warm_up_answers_are_colour_words_independent_of_the_image():
    examples = format_warm_up_examples(200, seed=0)
    drawn = [_dominant_shape_colour(image) for image, _, _ in examples]
    agree = sum(colour == answer for colour, (_, _, answer) in zip(drawn, examples, strict=True))

    assert {answer for _, _, answer in examples} == set(COLOURS)
    assert 20 <= agree <= 80  # chance is 50 of 200


def _dominant_shape_colour(data: bytes) -> str:
    colours = {rgb: name for name, rgb in COLOURS.items()}
    counts = Image.open(io.BytesIO(data)).convert("RGB").getcolors(64 * 64)
    return max((count, colours[rgb]) for count, rgb in counts if rgb in colours)[1]
