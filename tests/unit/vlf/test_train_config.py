"""`vlf train --config`: a recipe in TRL's and PEFT's names becomes the request's fields, and a key
that is wrong, or that the trainer service owns, is refused naming the key."""

from __future__ import annotations

import pytest

from shared.contracts import events as ev
from vlf.train_config import DPO_FIELDS, TrainConfigError, read_train_config


def _recipe(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_trl_names_set_the_request_and_the_rest_keep_the_papers_values(tmp_path):
    path = _recipe(
        tmp_path,
        "beta: 0.2\nloss_type: ipo\nnum_train_epochs: 1\nper_device_train_batch_size: 4\n"
        "learning_rate: 5.0e-6\nlora:\n  r: 16\n  lora_alpha: 32\n",
    )

    hparams, lora = read_train_config(path)

    assert (hparams.beta, hparams.loss_type, hparams.num_train_epochs) == (0.2, ["ipo"], 1.0)
    assert (hparams.per_device_train_batch_size, hparams.learning_rate) == (4, 5e-6)
    assert hparams.gradient_accumulation_steps == ev.TrainHyperparams().gradient_accumulation_steps
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 32, ev.LoraSpec().lora_dropout)


def test_an_empty_file_is_the_papers_recipe(tmp_path):
    assert read_train_config(_recipe(tmp_path, "")) == (ev.TrainHyperparams(), ev.LoraSpec())


def test_an_unknown_key_is_refused_with_the_accepted_names(tmp_path):
    with pytest.raises(TrainConfigError) as refused:
        read_train_config(_recipe(tmp_path, "num_epochs: 2\n"))

    assert "unknown key num_epochs" in str(refused.value)
    assert all(name in str(refused.value) for name in DPO_FIELDS)


def test_a_lora_key_at_the_top_level_is_pointed_under_lora(tmp_path):
    with pytest.raises(TrainConfigError, match="LoraConfig names go under lora:"):
        read_train_config(_recipe(tmp_path, "lora_alpha: 32\n"))


@pytest.mark.parametrize(
    "key", ["output_dir: /etc", "hub_token: hf_x", "push_to_hub: true", "lora:\n  target_modules: all"]
)
def test_fields_the_trainer_service_owns_are_refused(tmp_path, key):
    with pytest.raises(TrainConfigError, match="set by the trainer service"):
        read_train_config(_recipe(tmp_path, key + "\n"))


def test_a_bad_value_is_named_by_the_files_key(tmp_path):
    with pytest.raises(TrainConfigError, match=r"per_device_train_batch_size: .*greater than or equal to 1"):
        read_train_config(_recipe(tmp_path, "per_device_train_batch_size: 0\n"))
    with pytest.raises(TrainConfigError, match=r"lora\.lora_dropout"):
        read_train_config(_recipe(tmp_path, "lora:\n  lora_dropout: 1.5\n"))


@pytest.mark.parametrize("text", ["- beta\n", "beta: [\n", "lora: 16\n"])
def test_a_file_that_is_not_a_recipe_is_refused(tmp_path, text):
    with pytest.raises(TrainConfigError):
        read_train_config(_recipe(tmp_path, text))
