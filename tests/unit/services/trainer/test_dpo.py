"""DPO on the tiny VLMs: adapters and full models come out loadable, runs resume, and the precomputed
reference log-probs train exactly like TRL's on-the-fly reference."""

import gc
import io
import json
import math
import weakref

import pytest
import torch
from peft import PeftModel
from PIL import Image
from pydantic import ValidationError
from transformers import AutoModelForImageTextToText

from devkit.tinymodels import FAMILIES, build_tiny_vlm
from services.trainer.dpo import (
    DpoJobConfig,
    PairRecord,
    ProgressUpdate,
    build_trainer,
    dpo_args,
    train,
    with_reference_logps,
)
from services.trainer.job import dpo_config
from services.trainer.settings import TrainerSettings
from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.transformers_local import TransformersBackend
from shared.contracts import events as ev
from shared.contracts.events import SamplingParams
from shared.ml import implicit_reward
from shared.ml.implicit_reward import preference_accuracy
from shared.ml.preference_data import preference_dataset

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 0)}


def png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_pairs(count: int = 8) -> list[PairRecord]:
    names = list(COLOURS)
    return [
        PairRecord(
            pair_id=f"pair-{i}",
            prompt="What colour is the shape?",
            images=[png(COLOURS[names[i % 4]])],
            chosen=f"The shape is {names[i % 4]}.",
            rejected=f"The shape is {names[(i + 1) % 4]}.",
        )
        for i in range(count)
    ]


def quick_config(model_path, **overrides) -> DpoJobConfig:
    """A two-step run; ``overrides`` by name, whether a hyperparameter, a LoRA or a job setting."""
    hparams = {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
    }
    hparams |= {k: overrides.pop(k) for k in list(overrides) if k in ev.TrainHyperparams.model_fields}
    lora = {k: overrides.pop(k) for k in list(overrides) if k in ev.LoraSpec.model_fields}
    return DpoJobConfig(
        base_model=str(model_path),
        hparams=ev.TrainHyperparams(**hparams),
        lora=ev.LoraSpec(**lora),
        **({"save_steps": 2} | overrides),
    )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return {family: build_tiny_vlm(family, tmp_path_factory.mktemp(family)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_run_saves_an_adapter_that_loads_with_peft_and_generates(family, tiny_models, tmp_path):
    outcome = train(colour_pairs(), quick_config(tiny_models[family]), tmp_path / "run")

    base = AutoModelForImageTextToText.from_pretrained(tiny_models[family])
    adapted = PeftModel.from_pretrained(base, outcome.artifact_dir)
    backend = TransformersBackend(
        str(tiny_models[family]), device="cpu", adapter_path=str(outcome.artifact_dir)
    )
    request = GenerationRequest(
        messages=[ChatMessage(role="user", text="What colour is the shape?")],
        images=[png(COLOURS["red"])],
        params=SamplingParams(max_tokens=5),
    )
    (result,) = backend.generate([request])

    assert outcome.kind == "adapter"
    assert outcome.steps == 2
    assert (outcome.artifact_dir / "adapter_config.json").exists()
    assert (outcome.artifact_dir / "processor_config.json").exists()
    assert any("lora_B" in name and param.abs().sum() > 0 for name, param in adapted.named_parameters())
    lora_layers = [name for name, _ in adapted.named_modules() if name.endswith("lora_A")]
    assert lora_layers
    assert all("language_model" in name for name in lora_layers)
    assert result.completion_tokens >= 1


def test_full_finetune_trains_the_language_model_and_leaves_the_vision_tower(tiny_models, tmp_path):
    path = tiny_models["qwen2_vl"]
    outcome = train(colour_pairs(), quick_config(path, use_lora=False, learning_rate=1e-3), tmp_path / "run")

    before = AutoModelForImageTextToText.from_pretrained(path).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(outcome.artifact_dir).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}

    assert outcome.kind == "full"
    assert any("language_model" in name for name in changed)
    assert not any(".visual." in name for name in changed)


def test_a_second_call_resumes_from_the_last_checkpoint(tiny_models, tmp_path):
    output_dir = tmp_path / "run"
    updates: list[ProgressUpdate] = []
    train(colour_pairs(), quick_config(tiny_models["llava"], max_steps=2), output_dir)

    outcome = train(
        colour_pairs(), quick_config(tiny_models["llava"], max_steps=4), output_dir, updates.append
    )

    assert (output_dir / "checkpoint-2").is_dir()
    assert [update.step for update in updates] == [3, 4]
    assert outcome.steps == 4


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_the_adapters_dropout_is_the_configured_lora_dropout(family, tiny_models, tmp_path):
    """TRL's ``disable_dropout`` used to zero it with the base model's: ``lora_dropout`` had no effect."""
    config = quick_config(tiny_models[family], lora_dropout=0.3, precompute_ref_logps=False)
    trainer = build_trainer(colour_pairs(2), config, dpo_args(config, tmp_path / "run"))

    lora = [m.p for name, m in trainer.model.named_modules() if ".lora_dropout." in name]
    assert lora and set(lora) == {0.3}


def test_precomputed_reference_trains_like_trls_on_the_fly_reference(tiny_models, tmp_path):
    """Same data, seed and steps, dropout off: loss and rewards agree within 1e-3."""
    config = quick_config(tiny_models["qwen2_vl"], max_steps=3, save_steps=100, lora_dropout=0.0)
    runs: dict[bool, list[ProgressUpdate]] = {True: [], False: []}
    outcomes = {
        precompute: train(
            colour_pairs(),
            config.model_copy(update={"precompute_ref_logps": precompute}),
            tmp_path / f"precompute-{precompute}",
            runs[precompute].append,
        )
        for precompute in (True, False)
    }

    for fast, plain in zip(runs[True], runs[False], strict=True):
        assert fast.step == plain.step
        assert fast.loss == pytest.approx(plain.loss, abs=1e-3)
        assert fast.reward_margin == pytest.approx(plain.reward_margin, abs=1e-3)
        assert fast.reward_accuracy == pytest.approx(plain.reward_accuracy, abs=1e-3)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert outcomes[True].metrics[key] == pytest.approx(outcomes[False].metrics[key], abs=1e-3)
    assert abs(runs[True][-1].reward_margin) > 1e-3  # the policy has moved: the comparison means something
    assert list((tmp_path / "precompute-True").glob("ref_logps-*.json"))


def test_progress_steps_increase_with_finite_loss(tiny_models, tmp_path):
    updates: list[ProgressUpdate] = []
    train(colour_pairs(), quick_config(tiny_models["llava"], max_steps=4), tmp_path / "run", updates.append)

    assert [update.step for update in updates] == [1, 2, 3, 4]
    assert all(math.isfinite(update.loss) and update.total_steps == 4 for update in updates)
    assert all(update.pairs_per_s > 0 for update in updates)
    assert updates[-1].eta_s == 0


def test_cached_reference_logps_are_read_without_the_model(tiny_models, tmp_path):
    pairs = colour_pairs(4)
    config = quick_config(tiny_models["qwen2_vl"])
    train(pairs, config, tmp_path / "run", cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("ref_logps-*.json")

    dataset = with_reference_logps(
        preference_dataset(pairs), None, None, config, cache_file, torch.device("cpu")
    )

    assert len(dataset["ref_chosen_logps"]) == 4
    assert all(value < 0 for value in dataset["ref_rejected_logps"])


def test_preference_accuracy_rises_on_the_pairs_the_adapter_was_trained_on(tiny_models, tmp_path):
    path = tiny_models["qwen2_vl"]
    pairs = [pair.model_copy(update={"rejected": "No idea."}) for pair in colour_pairs(8)]
    outcome = train(pairs, quick_config(path, max_steps=8, learning_rate=2e-2), tmp_path / "run")

    trained = preference_accuracy(path, outcome.artifact_dir, path, pairs, beta=0.1)
    untrained = preference_accuracy(path, None, path, pairs, beta=0.1)

    assert untrained == 0.0  # policy == reference: every pair is a tie
    assert trained >= 0.75


def test_the_policy_is_freed_before_a_separate_reference_loads(tiny_models, tmp_path, monkeypatch):
    """With an adapter and a reference of its own, the policy's weights (held by the base model and
    by the PEFT wrapper) must be gone when the reference loads: two 7B models do not fit one GPU."""
    path = tiny_models["qwen2_vl"]
    pairs = colour_pairs(4)
    outcome = train(pairs, quick_config(path), tmp_path / "run")
    reference = build_tiny_vlm("qwen2_vl", tmp_path / "reference")  # the same weights, another path
    loaded: list[weakref.ref] = []
    alive_at_each_load: list[int] = []

    class CountingLoader:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            gc.collect()
            alive_at_each_load.append(sum(model() is not None for model in loaded))
            model = AutoModelForImageTextToText.from_pretrained(*args, **kwargs)
            loaded.append(weakref.ref(model))
            return model

    monkeypatch.setattr(implicit_reward, "AutoModelForImageTextToText", CountingLoader)
    accuracy = preference_accuracy(path, outcome.artifact_dir, reference, pairs, beta=0.1)
    assert alive_at_each_load == [0, 0]
    assert 0.0 <= accuracy <= 1.0


def test_every_warmup_ratio_the_contract_accepts_is_one_the_job_accepts(tmp_path):
    with pytest.raises(ValidationError):
        ev.TrainHyperparams(warmup_ratio=1.0)  # the job refuses it: transformers would read one step
    for ratio in (0.0, 0.1, 0.999):
        request = ev.TrainRequest(job_id="j", base_model="m", hparams=ev.TrainHyperparams(warmup_ratio=ratio))
        args = dpo_args(dpo_config(request, TrainerSettings()), tmp_path)
        assert args.warmup_steps == ratio


def test_a_run_reports_to_the_installed_trackers_under_its_job_id(tmp_path, caplog):
    request = ev.TrainRequest(job_id="train-tracked", base_model="m")
    settings = TrainerSettings(report_to=["tensorboard", "no-such-tracker"])

    args = dpo_args(dpo_config(request, settings), tmp_path)

    assert args.report_to == ["tensorboard"] and args.run_name == "train-tracked"
    assert "no-such-tracker" in caplog.text  # left out with a warning, the run goes on
    untracked = dpo_args(dpo_config(request, TrainerSettings(report_to=[])), tmp_path)
    assert untracked.report_to == []


def test_every_field_of_a_recipe_file_reaches_trls_config_under_its_own_name(tmp_path):
    """train.yaml (DPOConfig and LoraConfig names) -> the request -> the job -> DPOConfig/LoraConfig:
    each key, set away from its default, arrives unchanged under the same name."""
    from services.trainer.dpo import lora_config
    from vlf.train_config import read_train_config

    recipe = {
        "beta": 0.25,
        "loss_type": ["sigmoid", "sft"],
        "loss_weights": [1.0, 0.5],
        "learning_rate": 3e-6,
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "adam_beta2": 0.95,
        "num_train_epochs": 2.0,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 3,
        "bf16": False,
        "gradient_checkpointing": False,
        "max_steps": 7,
        "seed": 7,
    }
    lora = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1}
    assert set(recipe) == set(ev.TrainHyperparams.model_fields), "the test covers every field"
    defaults = ev.TrainHyperparams().model_dump()
    assert all(recipe[name] != defaults[name] for name in recipe)
    (tmp_path / "train.yaml").write_text(json.dumps({**recipe, "lora": lora}))

    hparams, lora_spec = read_train_config(tmp_path / "train.yaml")
    request = ev.TrainRequest(job_id="j", base_model="m", hparams=hparams, lora=lora_spec)
    args = dpo_args(dpo_config(request, TrainerSettings()), tmp_path / "out")
    peft = lora_config(dpo_config(request, TrainerSettings()))

    renamed = {"warmup_ratio": "warmup_steps"}  # transformers 5 reads a warmup_steps below 1 as a ratio
    for name, value in recipe.items():
        assert getattr(args, renamed.get(name, name)) == value, name
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (16, 32, 0.1)
