from pathlib import Path

from PIL import Image

from devkit.benchmark_fixtures import COLOURS, build_mme_fixture, build_mmhal_fixture


def test_mme_fixture_images_show_what_the_yes_question_says(tmp_path: Path) -> None:
    truth = build_mme_fixture(tmp_path, ["color", "position"], images_per_subtask=6, seed=3)

    for name, ((yes_question, yes), (_, no)) in truth["color"].items():
        assert (yes, no) == ("Yes", "No")
        colour = yes_question.removeprefix("Is the shape ").split("?")[0]
        pixel = Image.open(tmp_path / "color" / name).convert("RGB").getpixel((48, 60))
        assert all(abs(a - b) < 40 for a, b in zip(pixel, COLOURS[colour], strict=True)), (
            name,
            pixel,
            colour,
        )
    for name, ((yes_question, _), _) in truth["position"].items():
        image = Image.open(tmp_path / "position" / name).convert("L")
        left_is_drawn = image.getpixel((20, 46)) < 200
        assert left_is_drawn == ("left side" in yes_question), name


def test_fixtures_are_deterministic_per_seed(tmp_path: Path) -> None:
    first = build_mme_fixture(tmp_path / "a", ["count", "OCR"], images_per_subtask=4, seed=7)
    second = build_mme_fixture(tmp_path / "b", ["count", "OCR"], images_per_subtask=4, seed=7)
    other = build_mme_fixture(tmp_path / "c", ["count", "OCR"], images_per_subtask=4, seed=8)
    assert first == second != other
    assert build_mmhal_fixture(tmp_path / "m1.json", tmp_path / "i1") == build_mmhal_fixture(
        tmp_path / "m2.json", tmp_path / "i2"
    )
