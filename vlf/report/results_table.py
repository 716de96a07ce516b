"""Base-vs-tuned results table laid out like the paper's: one row per model, a relative-change row.

The same content comes out as Markdown (for reports and the demo) and as a JSON-able dict (for
events and the ledger).
"""

from collections.abc import Mapping
from dataclasses import dataclass

from services.evaluator.mme import MmeScores
from services.evaluator.mmhal import MmhalScores


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    value_format: str


# Paper column order; a column is shown when at least one of the two models has its metric.
COLUMNS = (
    Column("mme_perception", "MME perception", ".1f"),
    Column("mme_cognition", "MME cognition", ".1f"),
    Column("mmhal_score", "MMHal-Bench score", ".2f"),
    Column("mmhal_hallucination_rate", "MMHal-Bench hallucination rate", ".2f"),
    Column("mmvet_total", "MM-Vet", ".1f"),
    Column("preference_accuracy", "Held-out preference accuracy", ".3f"),
    Column("greedy_accuracy", "Greedy accuracy", ".3f"),
)
_COLUMNS_BY_KEY = {column.key: column for column in COLUMNS}
RELATIVE_CHANGE_LABEL = "Relative change"
MISSING = "n/a"


def metrics_from_scores(mme: MmeScores | None = None, mmhal: MmhalScores | None = None) -> dict[str, float]:
    """The table's metric dict from benchmark scores (held-out accuracies are added by the caller)."""
    metrics: dict[str, float] = {}
    if mme is not None:
        metrics |= {"mme_perception": mme.perception, "mme_cognition": mme.cognition}
    if mmhal is not None:
        metrics |= {"mmhal_score": mmhal.average, "mmhal_hallucination_rate": mmhal.hallucination_rate}
    return metrics


def relative_change(base: float, tuned: float) -> float | None:
    """Change in percent of the base value; None when the base is 0 and a ratio means nothing."""
    return None if base == 0 else (tuned - base) / abs(base) * 100


def build_results_table(
    base: Mapping[str, float],
    tuned: Mapping[str, float],
    *,
    base_name: str = "Base",
    tuned_name: str = "Tuned",
) -> dict:
    """``{"columns", "rows", "relative_change", "relative_change_percent"}`` with raw values in rows
    and the relative change both as a number and formatted like the paper ("+6.9%")."""
    unknown = sorted((set(base) | set(tuned)) - set(_COLUMNS_BY_KEY))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(_COLUMNS_BY_KEY)}")
    columns = [column for column in COLUMNS if column.key in base or column.key in tuned]
    percent = {
        column.key: relative_change(base[column.key], tuned[column.key])
        if column.key in base and column.key in tuned
        else None
        for column in columns
    }
    return {
        "columns": [{"key": column.key, "title": column.title} for column in columns],
        "rows": [
            {"model": base_name, "values": {column.key: base.get(column.key) for column in columns}},
            {"model": tuned_name, "values": {column.key: tuned.get(column.key) for column in columns}},
        ],
        "relative_change": {
            key: None if value is None else f"{value:+.1f}%" for key, value in percent.items()
        },
        "relative_change_percent": percent,
    }


def render_results_markdown(table: Mapping) -> str:
    """The table from ``build_results_table`` as GitHub Markdown, numbers right-aligned."""
    keys = [column["key"] for column in table["columns"]]
    header = ["Model", *(column["title"] for column in table["columns"])]
    lines = [_markdown_row(header), _markdown_row(["---", *("---:" for _ in keys)])]
    for row in table["rows"]:
        cells = [_format_value(key, row["values"][key]) for key in keys]
        lines.append(_markdown_row([row["model"], *cells]))
    changes = [table["relative_change"][key] or MISSING for key in keys]
    lines.append(_markdown_row([RELATIVE_CHANGE_LABEL, *changes]))
    return "\n".join(lines) + "\n"


def _format_value(key: str, value: float | None) -> str:
    return MISSING if value is None else format(value, _COLUMNS_BY_KEY[key].value_format)


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
