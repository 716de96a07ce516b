"""The format warm-up trains in place and leaves a model the backend loads and that answers a colour."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from devkit.tinymodels import answer_only_batch, build_tiny_vlm, warm_up_format
from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.transformers_local import TransformersBackend
from shared.contracts.events import SamplingParams
from vlf.demo_data import COLOURS, DEMO_PROMPT, demo_image, format_warm_up_examples

pytestmark = pytest.mark.slow


def test_labels_cover_only_the_answer_and_its_end_of_turn(tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(build_tiny_vlm("qwen2_vl", tmp_path))
    batch = answer_only_batch(processor, format_warm_up_examples(2, seed=0))
    tokenizer = processor.tokenizer

    for row, (_, _, answer) in enumerate(format_warm_up_examples(2, seed=0)):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert tokenizer.decode(labelled) == answer + tokenizer.eos_token


def test_warm_up_changes_the_language_model_only_and_then_answers_one_colour_word(tmp_path):
    model_dir = build_tiny_vlm("qwen2_vl", tmp_path, seed=0)
    before = AutoModelForImageTextToText.from_pretrained(model_dir)

    warm_up_format(model_dir, format_warm_up_examples(64, seed=0), steps=80, seed=0, lr=3e-3)

    after = AutoModelForImageTextToText.from_pretrained(model_dir)
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)
    assert all(
        torch.equal(a, b)
        for a, b in zip(before.model.visual.parameters(), after.model.visual.parameters(), strict=True)
    )
    backend = TransformersBackend(str(model_dir), device="cpu")
    params = SamplingParams(temperature=0.0, max_tokens=8)
    requests = [
        GenerationRequest(
            messages=[ChatMessage(role="user", text=DEMO_PROMPT)],
            images=[demo_image(colour, "circle", seed=index)],
            params=params,
        )
        for index, colour in enumerate(COLOURS)
    ]
    answers = [result.text for result in backend.generate(requests)]
    assert all(answer in COLOURS for answer in answers), answers
