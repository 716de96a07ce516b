"""The registry's assignment of models to instructions (rendezvous hashing, ``Registry.assign``)."""

from __future__ import annotations

from collections import Counter

import pytest

from shared.registry import JudgeEntry, ModelEntry, Registry, assigned_models

INSTRUCTION_IDS = [f"inst-{n:08d}" for n in range(2000)]


def registry(model_ids: list[str], k: int) -> Registry:
    return Registry(
        models=[
            ModelEntry(id=m, backend="openai", model=m, base_url="http://models:8000/v1") for m in model_ids
        ],
        models_per_instruction=k,
    )


@pytest.mark.parametrize(("pool", "k"), [(5, 4), (8, 4), (3, 1), (6, 3)])
def test_adding_a_model_moves_instructions_only_onto_the_new_model(pool: int, k: int):
    """Each instruction keeps its models, or swaps exactly one of them for the new model: the
    samplers already running never lose or gain work because a model joined."""
    before = registry([f"m{i}" for i in range(pool)], k)
    after = registry([f"m{i}" for i in range(pool)] + ["new"], k)
    moved = 0
    for instruction_id in INSTRUCTION_IDS:
        old, new = set(before.assign(instruction_id)), set(after.assign(instruction_id))
        assert len(new) == k
        if new != old:
            moved += 1
            assert "new" in new and len(old - new) == 1 and new - old == {"new"}, (instruction_id, old, new)
    # The new model takes its fair part: about k / (pool + 1) of the instructions.
    expected = len(INSTRUCTION_IDS) * k / (pool + 1)
    assert 0.8 * expected < moved < 1.2 * expected, (moved, expected)


def test_removing_a_model_moves_only_its_instructions():
    before = registry(["a", "b", "c", "d", "e"], 2)
    after = registry(["a", "b", "c", "e"], 2)
    for instruction_id in INSTRUCTION_IDS:
        old, new = set(before.assign(instruction_id)), set(after.assign(instruction_id))
        assert new == old or ("d" in old and old - {"d"} <= new), (instruction_id, old, new)


def test_the_assignment_ignores_registry_order_and_spreads_evenly():
    ids = ["m0", "m1", "m2", "m3", "m4"]
    forward, backward = registry(ids, 2), registry(list(reversed(ids)), 2)
    assert all(forward.assign(i) == backward.assign(i) for i in INSTRUCTION_IDS)
    load = Counter(m for i in INSTRUCTION_IDS for m in forward.assign(i))
    expected = len(INSTRUCTION_IDS) * 2 / len(ids)
    assert all(0.85 * expected < n < 1.15 * expected for n in load.values()), load


def test_an_instruction_that_names_its_models_keeps_them():
    reg = registry(["a", "b", "c"], 2)
    assert assigned_models(["c", "a"], reg, "inst-1") == ["a", "c"]
    assert assigned_models([], reg, "inst-1") == reg.assign("inst-1")


def test_a_judge_call_is_priced_per_part_with_cached_prompt_tokens_at_their_own_rate():
    """Recorded usage of one call: 2,000 prompt tokens, 1,536 of them from the provider's cache."""
    judge = JudgeEntry(
        id="gpt",
        model="gpt-4o",
        base_url="http://judge/v1",
        price_per_1k_input=2.5,
        price_per_1k_cached_input=1.25,
        price_per_1k_output=10.0,
    )
    cost = judge.call_cost(prompt_tokens=2000, cached_prompt_tokens=1536, completion_tokens=300)
    assert cost.input_usd == pytest.approx(464 * 2.5 / 1000)
    assert cost.cached_input_usd == pytest.approx(1536 * 1.25 / 1000)
    assert cost.output_usd == pytest.approx(3.0)
    assert cost.total_usd == pytest.approx(1.16 + 1.92 + 3.0)
    unpriced_cache = judge.model_copy(update={"price_per_1k_cached_input": None})
    full = unpriced_cache.call_cost(prompt_tokens=2000, cached_prompt_tokens=1536, completion_tokens=300)
    assert full.total_usd == pytest.approx(2000 * 2.5 / 1000 + 3.0), "no cached price: the full price"
