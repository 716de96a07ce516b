"""The tiny VLMs load through the real hub path and turn an image into a handful of tokens."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from devkit.tinymodels import FAMILIES, build_tiny_vlm, main

pytestmark = pytest.mark.slow

IMAGE_TOKEN = {"qwen2_vl": "<|image_pad|>", "llava": "<image>"}


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tmp_path_factory):
    family = request.param
    return family, build_tiny_vlm(family, tmp_path_factory.mktemp(family))


def test_loads_with_auto_classes_and_generates_from_an_image(built):
    family, path = built
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (90, 60), "red")], text=[text], return_tensors="pt")

    image_tokens = (
        inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[family])
    ).sum()
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)

    assert 1 <= image_tokens <= 16
    assert output.shape[1] == inputs["input_ids"].shape[1] + 5
    assert 500 <= len(processor.tokenizer) <= 1000
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)


def test_same_seed_gives_the_same_weights(tmp_path):
    first = build_tiny_vlm("llava", tmp_path / "a", seed=3)
    second = build_tiny_vlm("llava", tmp_path / "b", seed=3)
    other = build_tiny_vlm("llava", tmp_path / "c", seed=4)
    weights = [AutoModelForImageTextToText.from_pretrained(p).lm_head.weight for p in (first, second, other)]

    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_chat_template_keeps_the_generation_prompt_a_prefix_of_the_answer(built):
    """TRL splits prompt and completion by rendering both; the prompt must be a prefix."""
    _, path = built
    processor = AutoProcessor.from_pretrained(path)
    prompt = [{"role": "user", "content": [{"type": "text", "text": "Is it red?"}]}]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]

    rendered_prompt = processor.apply_chat_template(prompt, add_generation_prompt=True)
    rendered_all = processor.apply_chat_template(prompt + answer)

    assert rendered_all.startswith(rendered_prompt)
    assert "Yes." in rendered_all[len(rendered_prompt) :]


def test_cli_builds_a_model(tmp_path, capsys):
    main(["--family", "qwen2_vl", "--out", str(tmp_path / "m")])

    assert (tmp_path / "m" / "config.json").exists()
    assert str(tmp_path / "m") in capsys.readouterr().out
