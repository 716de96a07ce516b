"""DPO pairs/s on one H100/H200: raw TRL DPOTrainer vs ours (reference log-probs precomputed).

Qwen2-VL-7B architecture from a hand-made config with random weights (no download), the tiny BPE
tokenizer with the vocabulary resized to 152064, LoRA r=64 on the language model, ~390 tokens per
sequence of which 256 are image tokens (448x448 images), bf16, batch 16 without gradient
checkpointing (TRL's fastest single-GPU setting in DESIGN.md). Each trainer runs ``--warmup`` steps,
then ``--steps`` timed steps. Needs only torch, transformers, trl, peft (and datasets, which trl needs).

    python bench/bench_trainer_gpu.py --steps 10        # on the GPU, under 8 minutes
    python bench/bench_trainer_gpu.py --smoke           # tiny shapes on CPU, same code path
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from dataclasses import dataclass

import torch
from datasets import Dataset
from peft import LoraConfig
from PIL import Image
from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    TrainerCallback,
)
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from devkit.tinymodels import DEFAULT_CORPUS, QWEN2_VL_CHAT_TEMPLATE, qwen2_vl_tokenizer
from services.trainer.reference import PrecomputedRefDPOTrainer, VisionPreferenceWithRefCollator
from shared.ml.logps import completion_logps, fused_log_probs

LANGUAGE_MODEL_LINEAR_LAYERS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


@dataclass(frozen=True)
class Shape:
    text: dict
    vision: dict
    image_side: int  # pixels; (side / 28)^2 image tokens
    prompt_tokens: int
    completion_tokens: int


QWEN2_VL_7B = Shape(
    text={
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    vision={"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4},
    image_side=448,  # 256 image tokens
    prompt_tokens=40,
    completion_tokens=90,
)
SMOKE = Shape(
    text={
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    },
    vision={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
    image_side=112,  # 16 image tokens
    prompt_tokens=10,
    completion_tokens=20,
)


def build_processor(shape: Shape) -> Qwen2VLProcessor:
    pixels = {"min_pixels": shape.image_side**2, "max_pixels": shape.image_side**2}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**pixels),
        tokenizer=qwen2_vl_tokenizer(DEFAULT_CORPUS),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def build_model(shape: Shape, processor: Qwen2VLProcessor, device: torch.device, dtype: torch.dtype):
    token_id = processor.tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            **shape.text,
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={**shape.vision, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    torch.manual_seed(0)
    with device:
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.model.visual.requires_grad_(False)
    return model


def text_of_tokens(processor: Qwen2VLProcessor, count: int, rng: random.Random) -> str:
    words = " ".join(DEFAULT_CORPUS).split()
    text = ""
    while len(processor.tokenizer(text)["input_ids"]) < count:
        text += rng.choice(words) + " "
    return text.strip()


def pairs_dataset(processor: Qwen2VLProcessor, shape: Shape, count: int) -> Dataset:
    rng = random.Random(0)
    rows = []
    for _ in range(count):
        noise = torch.randint(0, 256, (shape.image_side, shape.image_side, 3), dtype=torch.uint8).numpy()
        rows.append(
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "text": None},
                            {"type": "text", "text": text_of_tokens(processor, shape.prompt_tokens, rng)},
                        ],
                    }
                ],
                "chosen": [
                    {"role": "assistant", "content": text_of_tokens(processor, shape.completion_tokens, rng)}
                ],
                "rejected": [
                    {"role": "assistant", "content": text_of_tokens(processor, shape.completion_tokens, rng)}
                ],
                "images": [Image.fromarray(noise)],
            }
        )
    return Dataset.from_list(rows)


class StepTimer(TrainerCallback):
    """Wall time between the end of the warm-up steps and the end of the last step."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.started = self.finished = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.warmup:
            self.started = self._now()
        if state.global_step == state.max_steps:
            self.finished = self._now()


def dpo_args(output_dir: str, cli: argparse.Namespace, on_gpu: bool) -> DPOConfig:
    return DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cli.batch,
        gradient_accumulation_steps=1,
        max_steps=cli.warmup + cli.steps,
        gradient_checkpointing=False,
        bf16=on_gpu,
        learning_rate=1e-5,
        max_length=None,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not on_gpu,
        dataloader_num_workers=4 if on_gpu else 0,
    )


def lora() -> LoraConfig:
    return LoraConfig(
        r=64,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=LANGUAGE_MODEL_LINEAR_LAYERS,
        task_type="CAUSAL_LM",
    )


def run(trainer: DPOTrainer, timer: StepTimer, cli: argparse.Namespace) -> float:
    trainer.add_callback(timer)
    trainer.train()
    return cli.steps * cli.batch / (timer.finished - timer.started)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precompute-batch", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, same code path")
    cli = parser.parse_args()
    if cli.smoke:
        cli.steps, cli.warmup, cli.batch, cli.precompute_batch = 2, 1, 2, 4
    shape = SMOKE if cli.smoke else QWEN2_VL_7B
    on_gpu = torch.cuda.is_available() and not cli.smoke
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    processor = build_processor(shape)
    dataset = pairs_dataset(processor, shape, (cli.warmup + cli.steps) * cli.batch)
    first_row = DataCollatorForVisionPreference(processor=processor)([dataset[0]])
    tokens = first_row["attention_mask"].sum(dim=1).float().mean().item()
    with tempfile.TemporaryDirectory() as scratch:
        model = build_model(shape, processor, device, dtype)
        trl_trainer = DPOTrainer(
            model=model,
            args=dpo_args(scratch, cli, on_gpu),
            train_dataset=dataset,
            processing_class=processor,
            peft_config=lora(),
        )
        trl_rate = run(trl_trainer, StepTimer(cli.warmup, device), cli)
        trl_peak = peak_gib(device)
        del trl_trainer, model
        release(device)

        model = build_model(shape, processor, device, dtype)
        started = time.perf_counter()
        with fused_log_probs(model):
            chosen, rejected = completion_logps(
                model, processor, dataset, batch_size=cli.precompute_batch, max_length=None
            )
        reference_rate = len(dataset) / (time.perf_counter() - started)
        ours_dataset = dataset.add_column("ref_chosen_logps", chosen).add_column(
            "ref_rejected_logps", rejected
        )
        ours_trainer = PrecomputedRefDPOTrainer(
            model=model,
            args=dpo_args(scratch, cli, on_gpu),
            train_dataset=ours_dataset,
            processing_class=processor,
            data_collator=VisionPreferenceWithRefCollator(processor=processor),
            peft_config=lora(),
        )
        ours_rate = run(ours_trainer, StepTimer(cli.warmup, device), cli)
        ours_peak = peak_gib(device)

    name = torch.cuda.get_device_name() if on_gpu else "CPU (smoke shapes)"
    print(f"device: {name}; {tokens:.0f} tokens per sequence; batch {cli.batch}; {cli.steps} timed steps")
    print(f"raw TRL DPOTrainer            : {trl_rate:7.2f} pairs/s  peak {trl_peak:6.1f} GiB")
    print(f"ours, precomputed reference   : {ours_rate:7.2f} pairs/s  peak {ours_peak:6.1f} GiB")
    print(f"reference pass (no grad)      : {reference_rate:7.2f} pairs/s  (batch {cli.precompute_batch})")
    print(f"ratio ours / TRL              : {ours_rate / trl_rate:7.2f}x")


if __name__ == "__main__":
    main()
