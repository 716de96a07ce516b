"""The registry's assignment of models to instructions (rendezvous hashing, ``Registry.assign``)."""

from __future__ import annotations

from collections import Counter

import pytest

from shared.registry import ModelEntry, Registry, assigned_models

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
