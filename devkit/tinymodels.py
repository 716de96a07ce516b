"""Tiny randomly initialised vision-language models, built offline.

Tests, CI and the local demo need real models that load through the same path as a hub id
(``AutoModelForImageTextToText`` + ``AutoProcessor``), yet nothing may be downloaded. This module
trains a small byte-level BPE tokenizer in memory, wraps it with each family's special tokens and
chat template, builds a few-layer model from a hand-made config and saves everything with
``save_pretrained``. A build takes seconds on a CPU.

CLI: ``python -m devkit.tinymodels --family qwen2_vl --out .vlf/models/tiny-qwen2-vl``
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

Family = Literal["qwen2_vl", "llava"]
FAMILIES: tuple[Family, ...] = ("qwen2_vl", "llava")

VOCAB_SIZE = 768
WARM_UP_BATCH_SIZE = 8
VISION_TOWER_ATTRIBUTES = ("visual", "vision_tower", "vision_model")
TEXT_HIDDEN = 64
MAX_POSITIONS = 2048

# The demo's vocabulary: what the instructions, answers and judge replies are made of.
DEFAULT_CORPUS: list[str] = [
    "You are a helpful assistant.",
    "What colour is the shape in the image? The shape is red. The shape is blue. It is green.",
    "Colours: red, green, blue, yellow, orange, purple, black, white, grey, brown, pink.",
    "Shapes: circle, square, triangle, rectangle, star, line, dot, cross, ring, box.",
    "Numbers: zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10.",
    "Is there a circle in the image? Yes, there is. No, there is not. yes no Yes No",
    "How many shapes are there? There are two shapes. There is one square and one circle.",
    "Describe the image. The image shows a small red circle on a white background.",
    "Where is the star? The star is on the left, on the right, at the top, at the bottom, in the middle.",
    "Rating: 5 Rationale: the answer is accurate and grounded in the image.",
    "Helpfulness, Visual Faithfulness, Ethical Considerations. The answer is helpful and safe.",
    "user assistant system image question answer please answer with a single word.",
]

QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM: {% elif message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN2_VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def train_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE over ``corpus``: every byte is in the alphabet, so any text encodes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def qwen2_vl_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(corpus, QWEN2_VL_SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN2_VL_SPECIAL_TOKENS[1:],
        padding_side="left",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def llava_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(corpus, LLAVA_SPECIAL_TOKENS),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<image>"],
        padding_side="left",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def tiny_text_sizes(vocab_size: int) -> dict:
    """Shared language-model sizes: 2 layers, hidden 64, 4 heads (head_dim 16), 2 kv heads."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
    }


def qwen2_vl_parts(corpus: list[str]) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2-VL with a 1-block vision tower; every image is resized to 56..112 px, i.e. 4..16 tokens."""
    tokenizer = qwen2_vl_tokenizer(corpus)
    token_id = tokenizer.convert_tokens_to_ids
    text_sizes = tiny_text_sizes(len(tokenizer))
    config = Qwen2VLConfig(
        text_config={
            **text_sizes,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": TEXT_HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return Qwen2VLForConditionalGeneration(config), processor


def llava_parts(corpus: list[str]) -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA with a 2-layer CLIP tower on 28 px images (4 patches, so 4 image tokens) and a Qwen2 LM."""
    tokenizer = llava_tokenizer(corpus)
    token_id = tokenizer.convert_tokens_to_ids
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    text = Qwen2Config(
        **tiny_text_sizes(len(tokenizer)),
        bos_token_id=token_id("<s>"),
        eos_token_id=token_id("</s>"),
        pad_token_id=token_id("<pad>"),
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=token_id("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return LlavaForConditionalGeneration(config), processor


def build_tiny_vlm(family: Family, out_dir: Path, *, seed: int = 0, corpus: list[str] | None = None) -> Path:
    """Build, save and return ``out_dir``: loadable with ``AutoModelForImageTextToText`` + ``AutoProcessor``.

    The same ``seed`` and corpus give the same weights and tokenizer, so tests are reproducible.
    """
    torch.manual_seed(seed)
    parts = {"qwen2_vl": qwen2_vl_parts, "llava": llava_parts}[family]
    model, processor = parts(corpus or DEFAULT_CORPUS)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def warm_up_format(
    model_dir: Path, examples: list[tuple[bytes, str, str]], *, steps: int, seed: int, lr: float
) -> None:
    """Teach a random-init model the answer format, in place: a short supervised fine-tune on
    ``(image PNG/JPEG bytes, prompt, answer)`` examples, with the loss on the answer and its end-of-turn.

    The demo passes random colour words as answers, so the model learns to reply with one colour word
    and stop, yet stays at chance: every gain later measured comes from preference training. The
    vision tower stays frozen, as in DPO: fitting random labels through it wipes out the colour in its
    features, and the frozen tower of the DPO run could not win it back. Every other weight is trained
    (AdamW, batches of ``WARM_UP_BATCH_SIZE`` reshuffled every pass); seconds on a CPU.
    """
    if not examples:
        raise ValueError("the format warm-up needs at least one example")
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    for tower in vision_towers(model):
        tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for batch in example_batches(examples, steps, random.Random(seed)):
        loss = model(**answer_only_batch(processor, batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)


def vision_towers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The vision encoder(s) under ``model.model``, whatever the family calls them."""
    return [getattr(model.model, name) for name in VISION_TOWER_ATTRIBUTES if hasattr(model.model, name)]


def example_batches(
    examples: list[tuple[bytes, str, str]], steps: int, rng: random.Random
) -> list[list[tuple[bytes, str, str]]]:
    """``steps`` batches, drawn by passes over the shuffled examples (each pass shuffled anew)."""
    batches: list[list[tuple[bytes, str, str]]] = []
    while len(batches) < steps:
        order = rng.sample(examples, len(examples))
        batches.extend(order[i : i + WARM_UP_BATCH_SIZE] for i in range(0, len(order), WARM_UP_BATCH_SIZE))
    return batches[:steps]


def answer_only_batch(processor: ProcessorMixin, examples: list[tuple[bytes, str, str]]) -> BatchFeature:
    """Model inputs for the chat ``user: image + prompt``, ``assistant: answer``, labels on the answer only.

    The text ends at the assistant's end-of-turn token (what generation stops on); padding is on the
    right so that each row's prompt is its first tokens.
    """
    tokenizer = processor.tokenizer
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data, _, _ in examples]
    prompts, texts = [], []
    for _, prompt, answer in examples:
        user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        reply = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        full = processor.apply_chat_template(user + reply)
        prompts.append(processor.apply_chat_template(user, add_generation_prompt=True))
        texts.append(full[: full.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)])
    prompt_lengths = [
        processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
        for image, prompt in zip(images, prompts, strict=True)
    ]
    inputs = processor(images=images, text=texts, padding=True, padding_side="right", return_tensors="pt")
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = -100
    inputs["labels"] = labels
    return inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-init VLM offline.")
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.family, args.out, seed=args.seed))


if __name__ == "__main__":
    main()
