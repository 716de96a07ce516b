"""Pairs/s on CPU of a plain TRL DPOTrainer script vs ``services.trainer.dpo.train`` (precompute off and on).

Same tiny Qwen2-VL, data, batch and steps for all three, in one process. Goal: ours with precompute off
within 5% of plain TRL (ratio >= 0.95); with precompute on, faster (no reference forward per step).

    python bench/bench_trainer_cpu.py [--pairs 32] [--steps 8]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import DPOConfig, DPOTrainer

from devkit.tinymodels import build_tiny_vlm
from services.trainer.dpo import DpoJobConfig, PairRecord, lora_config, train
from shared.contracts import events as ev
from shared.ml.preference_data import preference_dataset

COLOURS = ["red", "green", "blue", "yellow"]


def colour_pairs(count: int) -> list[PairRecord]:
    def png(colour: str) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (96, 80), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    return [
        PairRecord(
            pair_id=f"pair-{i}",
            prompt="What colour is the shape in the image? Please answer with a single word.",
            images=[png(COLOURS[i % 4])],
            chosen=f"The shape is {COLOURS[i % 4]}. It is a circle on a white background.",
            rejected=f"The shape is {COLOURS[(i + 1) % 4]}. It is a square.",
        )
        for i in range(count)
    ]


def plain_trl(config: DpoJobConfig, pairs: list[PairRecord], output_dir: Path) -> float:
    """What a user would write with TRL alone: same model, LoRA, hyper-parameters and data."""
    hparams = config.hparams
    args = DPOConfig(
        output_dir=str(output_dir),
        beta=hparams.beta,
        learning_rate=hparams.learning_rate,
        lr_scheduler_type=hparams.lr_scheduler_type,
        warmup_steps=hparams.warmup_ratio,
        weight_decay=hparams.weight_decay,
        adam_beta2=hparams.adam_beta2,
        max_steps=hparams.max_steps,
        per_device_train_batch_size=hparams.per_device_train_batch_size,
        gradient_accumulation_steps=hparams.gradient_accumulation_steps,
        max_length=config.max_length,
        gradient_checkpointing=hparams.gradient_checkpointing,
        seed=hparams.seed,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = DPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(config.base_model),
        args=args,
        train_dataset=preference_dataset(pairs),
        processing_class=AutoProcessor.from_pretrained(config.base_model),
        peft_config=lora_config(config),
    )
    return trainer.train().metrics["train_samples_per_second"]


def ours(config: DpoJobConfig, pairs: list[PairRecord], output_dir: Path) -> tuple[float, float]:
    """Pairs/s inside the training loop, and over the whole call (reference pass and loading included)."""
    started = time.perf_counter()
    outcome = train(pairs, config, output_dir)
    wall = time.perf_counter() - started
    hparams = config.hparams
    pairs_trained = outcome.steps * hparams.per_device_train_batch_size * hparams.gradient_accumulation_steps
    return outcome.metrics["train_samples_per_second"], pairs_trained / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    cli = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = build_tiny_vlm("qwen2_vl", root / "model")
        pairs = colour_pairs(cli.pairs)
        config = DpoJobConfig(
            base_model=str(model),
            hparams=ev.TrainHyperparams(
                max_steps=cli.steps,
                per_device_train_batch_size=4,
                gradient_accumulation_steps=1,
                gradient_checkpointing=False,
            ),
            save_steps=10_000,
            precompute_batch_size=16,
        )
        trl_rate = plain_trl(config, pairs, root / "trl")
        off_rate, _ = ours(config.model_copy(update={"precompute_ref_logps": False}), pairs, root / "off")
        on_rate, on_wall_rate = ours(config, pairs, root / "on")
    print(f"plain TRL DPOTrainer          : {trl_rate:8.2f} pairs/s")
    print(f"ours, precompute off          : {off_rate:8.2f} pairs/s  ratio vs TRL {off_rate / trl_rate:.3f}")
    print(
        f"ours, precompute on (training): {on_rate:8.2f} pairs/s  speed-up vs TRL {on_rate / trl_rate:.2f}x"
    )
    print(f"ours, precompute on (whole call incl. reference pass and loading): {on_wall_rate:.2f} pairs/s")


if __name__ == "__main__":
    main()
