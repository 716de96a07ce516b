"""ReportData -> one self-contained HTML page (inline CSS, inline SVG, no scripts or external files)."""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from shared.contracts import events as ev
from vlf.report.data import RATING_LEVELS, ReportData
from vlf.report.results_table import COLUMNS
from vlf.report.svg import grouped_bar_chart, line_chart

TEMPLATE = "template.html.j2"
TRAIN_METRICS = (
    ("loss", "DPO loss"),
    ("reward_margin", "Reward margin"),
    ("reward_accuracy", "Reward accuracy"),
)
VALUE_FORMATS = {column.key: column.value_format for column in COLUMNS}


def slug(text: str) -> str:
    """A string safe inside an HTML id (tests and readers find cells by these ids)."""
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-").lower()


def rating_charts(data: ReportData) -> list[Markup]:
    """Per aspect, each model's share of ratings 1..5 (shares, so models with more answers compare)."""
    charts = []
    for aspect in dict.fromkeys(stats.aspect for stats in data.ratings):
        series = {
            stats.model_id: [count / stats.n if stats.n else 0.0 for count in stats.histogram]
            for stats in data.ratings
            if stats.aspect == aspect
        }
        charts.append(
            grouped_bar_chart(f"{aspect}: share of ratings", [str(r) for r in RATING_LEVELS], series)
        )
    return charts


def training_charts(data: ReportData) -> list[Markup]:
    charts = []
    for field, title in TRAIN_METRICS:
        series = {
            curve.job_id: [(p.step, getattr(p, field)) for p in curve.points if getattr(p, field) is not None]
            for curve in data.train_curves
        }
        series = {job: points for job, points in series.items() if points}
        if series:
            charts.append(line_chart(title, series))
    return charts


def results_charts(table: dict | None) -> list[Markup]:
    """One small chart per metric: base next to tuned (metrics differ in scale by 1000x)."""
    if table is None:
        return []
    rows = table["rows"]
    return [
        grouped_bar_chart(
            column["title"], [""], {row["model"]: [row["values"][column["key"]]] for row in rows}
        )
        for column in table["columns"]
    ]


def format_metric(key: str, value: float | None) -> str:
    return "n/a" if value is None else format(value, VALUE_FORMATS[key])


def render_report(data: ReportData) -> str:
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=StrictUndefined
    )
    env.filters["slug"] = slug
    env.filters["metric"] = format_metric
    return env.get_template(TEMPLATE).render(
        data=data,
        rating_levels=RATING_LEVELS,
        aspects=[aspect.value for aspect in ev.Aspect],
        rating_charts=rating_charts(data),
        bias_chart=grouped_bar_chart(
            "Mean rating by shown position",
            [f"#{b.position}" for b in data.position_bias],
            {"mean rating": [b.mean_rating for b in data.position_bias]},
        )
        if data.position_bias
        else None,
        margin_chart=grouped_bar_chart(
            "Pairs by score margin",
            [f"{b.low:g}-{b.high:g}" for b in data.margins],
            {"pairs": [float(b.count) for b in data.margins]},
        )
        if data.margins
        else None,
        training_charts=training_charts(data),
        results_charts=results_charts(data.results_table),
    )


def write_report(data: ReportData, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(data), encoding="utf-8")
    return out
