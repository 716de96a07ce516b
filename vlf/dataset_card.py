"""The dataset card (README.md) an export carries to the Hub: what made the data, so a reader can
judge it and reproduce it: the answering models, the judge with its model and prompt, the pair
rule and the counts."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from shared.registry import JudgeEntry, Registry


def judge_description(judge_id: str, registry_path: Path | None) -> str:
    """The judge's model and prompt (the template file's sha256, or the built-in rubric)."""
    if registry_path is None or not registry_path.is_file():
        return f"`{judge_id}` (not in this registry)"
    try:
        judge: JudgeEntry = Registry.load(registry_path).judge(judge_id)
    except KeyError:
        return f"`{judge_id}` (not in this registry)"
    if judge.prompt_template:
        text = Path(judge.prompt_template).read_bytes()
        prompt = f"template `{Path(judge.prompt_template).name}`, sha256 `{hashlib.sha256(text).hexdigest()}`"
    else:
        prompt = "the built-in rubric (helpfulness, visual faithfulness, ethical considerations)"
    return f"`{judge_id}`: model `{judge.model or judge.backend}`, prompt {prompt}"


def dataset_card(
    *,
    title: str,
    layout: str,
    judges: list[str],
    models: Counter[str],
    rule: dict[str, object],
    counts: dict[str, int],
) -> DatasetCard:
    """A card in the Hub's format: YAML metadata, then what the rows are and where they came from."""
    total = max(counts.values(), default=0)
    data = DatasetCardData(
        task_categories=["visual-question-answering", "image-text-to-text"],
        tags=["dpo", "preference", "rlaif", "vlfeedback"],
        size_categories=[_size_category(total)],
        pretty_name=title,
    )
    lines = [
        f"# {title}",
        "",
        f"Made with the VLFeedback pipeline (`vlf`); layout: {layout}.",
        "",
        "## Judges",
        *(f"- {judge}" for judge in judges),
        "",
        "## Answering models",
        *(f"- `{model}`: {count} answers" for model, count in models.most_common()),
        "",
        "## Pair rule",
        *(f"- {name}: `{value}`" for name, value in rule.items()),
        "",
        "## Counts",
        *(f"- {name}: {value}" for name, value in counts.items()),
        "",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"
