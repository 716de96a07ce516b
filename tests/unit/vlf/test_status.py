"""Model spend in `vlf status`: tokens from the ledger at the registry's prices."""

import pytest

from shared.registry import ModelEntry, Registry
from vlf.status import model_spend_usd


def entry(model_id: str, price_in: float, price_out: float) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        backend="openai",
        model=model_id,
        base_url="http://127.0.0.1:9/v1",
        price_per_1k_input=price_in,
        price_per_1k_output=price_out,
    )


def test_priced_models_are_charged_for_their_tokens_and_free_ones_are_left_out() -> None:
    registry = Registry(models=[entry("gpt-4v", 0.01, 0.03), entry("llava", 0, 0), entry("idle", 0.01, 0.03)])
    tokens = {"gpt-4v": (2000, 500), "llava": (10_000, 900), "retired": (5, 5)}

    assert model_spend_usd(tokens, registry) == {"gpt-4v": pytest.approx(2 * 0.01 + 0.5 * 0.03)}
