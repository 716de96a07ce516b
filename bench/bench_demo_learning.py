"""Does the demo's loop make a tiny model better? The demo's recipe, end to end, without the services.

Mirrors what the services do in ``make demo``: tiny random-init Qwen2-VL models warmed up on the
answer format only (random colour words, so at chance), one sampled answer per train image from each
of 4 such models (seeds 0..3; model 0 is the one trained), rated by rule against the reference, pairs
by the paper's rule (every 2-combination, mean of the 3 aspect ratings, higher mean chosen, ties
dropped), ~10% of instructions held out, DPO through ``services.trainer.dpo.train``. Reports greedy
accuracy on unseen images before and after, and held-out implicit-reward preference accuracy, for
sigmoid+SFT and for plain sigmoid DPO (whose greedy answers degenerate while its margins grow).

Goal: tuned greedy accuracy >= base + 0.5 and held-out preference accuracy >= 0.9, for every seed.

    python bench/bench_demo_learning.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from statistics import mean

import torch

from devkit.tinymodels import build_tiny_vlm, warm_up_format
from services.annotator.verifiable import rate_with_reference
from services.trainer.dpo import DpoJobConfig, PairRecord, train
from services.trainer.job import dpo_config as job_dpo_config
from services.trainer.settings import TrainerSettings
from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.transformers_local import TransformersBackend
from shared.contracts.events import SamplingParams
from shared.ml.answer_matching import match_reference
from shared.ml.implicit_reward import preference_accuracy
from vlf.demo import demo_train_request
from vlf.demo_data import build_demo_set, format_warm_up_examples

SAMPLER_SEEDS = (0, 1, 2, 3)
WARM_UP = {"steps": 120, "lr": 3e-3}
WARM_UP_EXAMPLES = 256
SAMPLE_TEMPERATURE = 1.0
MAX_ANSWER_TOKENS = 8
HOLD_OUT_SHARE = 0.1
GOAL_GAIN = 0.5
GOAL_PREFERENCE_ACCURACY = 0.9


def dpo_config(base_model: Path, loss_type: list[str], seed: int) -> DpoJobConfig:
    """The demo's own recipe (``vlf.demo.demo_train_request``), converted as the trainer converts it,
    with only the losses and the seed varied: the bench measures what ``make demo`` trains."""
    request = demo_train_request(base_model)
    hparams = request.hparams.model_copy(
        update={"loss_type": loss_type, "loss_weights": [1.0] * len(loss_type), "seed": seed}
    )
    config = job_dpo_config(
        request.model_copy(update={"hparams": hparams}), TrainerSettings(save_steps=10_000)
    )
    return config.model_copy(update={"max_length": None})


@dataclass(frozen=True)
class Item:
    """One instruction of the demo set: image bytes, prompt and the reference colour."""

    key: str
    image: bytes
    prompt: str
    reference: str


def read_items(path: Path) -> list[Item]:
    items = []
    for number, line in enumerate(path.read_text().splitlines()):
        row = json.loads(line)
        image = (path.parent / row["image"]).read_bytes()
        items.append(Item(row.get("id", f"{path.stem}-{number}"), image, row["prompt"], row["reference"]))
    return items


def request(item: Item, params: SamplingParams) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", text=item.prompt)], images=[item.image], params=params
    )


def greedy_accuracy(model: Path, items: list[Item], adapter: Path | None = None) -> tuple[float, list[str]]:
    backend = TransformersBackend(str(model), device="cpu", adapter_path=str(adapter) if adapter else None)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_ANSWER_TOKENS)
    answers = [r.text for r in backend.generate([request(item, params) for item in items])]
    backend.close()
    correct = [
        match_reference(answer, item.reference).matched for answer, item in zip(answers, items, strict=True)
    ]
    return sum(correct) / len(items), answers


def sampled_answers(models: list[Path], items: list[Item], seed: int) -> list[list[str]]:
    """One answer per model for each item, sampled at the demo's temperature."""
    per_model = []
    for index, model in enumerate(models):
        backend = TransformersBackend(str(model), device="cpu", max_batch_size=32)
        params = SamplingParams(
            temperature=SAMPLE_TEMPERATURE, max_tokens=MAX_ANSWER_TOKENS, seed=seed + index
        )
        per_model.append([r.text for r in backend.generate([request(item, params) for item in items])])
        backend.close()
    return [list(answers) for answers in zip(*per_model, strict=True)]


def paper_pairs(item: Item, answers: list[str]) -> list[PairRecord]:
    """Every 2-combination; score = mean of the 3 aspect ratings; higher chosen; equal means dropped."""
    ratings = rate_with_reference(answers, item.reference)
    scores = [mean(r.rating for r in rating.values()) for rating in ratings]
    pairs = []
    for a, b in combinations(range(len(answers)), 2):
        if scores[a] == scores[b]:
            continue
        chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
        pairs.append(
            PairRecord(
                pair_id=f"{item.key}-{chosen}-{rejected}",
                prompt=item.prompt,
                images=[item.image],
                chosen=answers[chosen],
                rejected=answers[rejected],
            )
        )
    return pairs


def warmed_up_models(root: Path, seed: int) -> list[Path]:
    models = []
    for sampler_seed in SAMPLER_SEEDS:
        model = build_tiny_vlm("qwen2_vl", root / f"sampler-{sampler_seed}", seed=seed * 100 + sampler_seed)
        examples = format_warm_up_examples(WARM_UP_EXAMPLES, seed=seed * 100 + sampler_seed)
        warm_up_format(model, examples, steps=WARM_UP["steps"], seed=sampler_seed, lr=WARM_UP["lr"])
        models.append(model)
    return models


def run_seed(seed: int, root: Path) -> dict[str, dict[str, float]]:
    started = time.perf_counter()
    demo = build_demo_set(root / "data", seed=seed)
    train_items, eval_items = read_items(demo.instructions), read_items(demo.greedy_eval)
    models = warmed_up_models(root / "models", seed)
    warm_up_s = time.perf_counter() - started
    base_accuracy, base_answers = greedy_accuracy(models[0], eval_items)
    print(
        f"[seed {seed}] warm-up of {len(models)} models {warm_up_s:.1f}s; base greedy accuracy "
        f"{base_accuracy:.3f}; base answers {sorted(set(base_answers))}"
    )

    answers = sampled_answers(models, train_items, seed)
    correct = sum(
        match_reference(a, item.reference).matched
        for item, row in zip(train_items, answers, strict=True)
        for a in row
    )
    held_out_keys = set(
        random.Random(seed).sample([i.key for i in train_items], round(HOLD_OUT_SHARE * len(train_items)))
    )
    train_pairs, held_out_pairs = [], []
    for item, row in zip(train_items, answers, strict=True):
        (held_out_pairs if item.key in held_out_keys else train_pairs).extend(paper_pairs(item, row))
    print(
        f"[seed {seed}] sampled {correct}/{len(train_items) * len(models)} correct; "
        f"pairs train {len(train_pairs)}, held out {len(held_out_pairs)}"
    )

    results = {}
    for name, loss_type in (("sigmoid+sft", ["sigmoid", "sft"]), ("sigmoid", ["sigmoid"])):
        config = dpo_config(models[0], loss_type, seed)
        trained_at = time.perf_counter()
        outcome = train(train_pairs, config, root / f"dpo-{name}")
        train_s = time.perf_counter() - trained_at
        tuned_accuracy, tuned_answers = greedy_accuracy(outcome.artifact_dir, eval_items)
        pref_accuracy = preference_accuracy(
            outcome.artifact_dir, None, models[0], held_out_pairs, config.hparams.beta
        )
        results[name] = {
            "base_greedy": base_accuracy,
            "tuned_greedy": tuned_accuracy,
            "held_out_pref_acc": pref_accuracy,
            "train_s": train_s,
            "steps": outcome.steps,
        }
        print(
            f"[seed {seed}] {name}: {outcome.steps} steps in {train_s:.1f}s; tuned greedy accuracy "
            f"{tuned_accuracy:.3f} (base {base_accuracy:.3f}); "
            f"held-out preference accuracy {pref_accuracy:.3f}; "
            f"answers e.g. {tuned_answers[:4]}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy box)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    started = time.perf_counter()
    passed = True
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            recipe = run_seed(seed, Path(tmp))["sigmoid+sft"]
        ok = (
            recipe["tuned_greedy"] >= recipe["base_greedy"] + GOAL_GAIN
            and recipe["held_out_pref_acc"] >= GOAL_PREFERENCE_ACCURACY
        )
        passed &= ok
        print(f"[seed {seed}] goal {'met' if ok else 'MISSED'}")
    print(
        f"total {time.perf_counter() - started:.1f}s; "
        f"goal {'met' if passed else 'MISSED'} for seeds {args.seeds}"
    )


if __name__ == "__main__":
    main()
