"""The held-out split: stable, disjoint by instruction, about the configured share."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.pair_builder.split import split_of

IDS = [f"instruction-{n:06d}" for n in range(20_000)]


def test_about_half_a_percent_of_20k_instructions_are_held_out():
    heldout = [i for i in IDS if split_of(i) == "heldout"]

    assert 70 <= len(heldout) <= 130  # 100 expected; binomial sd 7


def test_the_split_is_the_same_in_another_process():
    """Python's hash() is salted per process; sha256 is not."""
    here = [split_of(i) for i in IDS[:2000]]
    code = (
        "from services.pair_builder.split import split_of;"
        "print(''.join('h' if split_of(f'instruction-{n:06d}', 0.3) == 'heldout' else 't' "
        "for n in range(2000)))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert there == "".join("h" if split_of(i, 0.3) == "heldout" else "t" for i in IDS[:2000])
    assert here == [split_of(i) for i in IDS[:2000]]


def test_seed_changes_the_choice_and_fraction_bounds_hold():
    seed_42 = {i for i in IDS if split_of(i, 0.05, seed=42) == "heldout"}
    seed_7 = {i for i in IDS if split_of(i, 0.05, seed=7) == "heldout"}

    assert seed_42 != seed_7
    assert all(split_of(i, 0.0) == "train" for i in IDS[:500])
    assert all(split_of(i, 1.0) == "heldout" for i in IDS[:500])
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_of("x", 1.5)


def test_a_larger_fraction_only_adds_instructions_to_the_held_out_side():
    small = {i for i in IDS if split_of(i, 0.005) == "heldout"}
    large = {i for i in IDS if split_of(i, 0.02) == "heldout"}

    assert small < large
