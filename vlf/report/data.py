"""Everything the report shows, gathered from the ledger (and, when given, the training-progress topic).

Each section is computed by a small pure function over events, so it is tested without a database;
``gather_report`` streams the ledger through them.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from pydantic import BaseModel, Field

from services.evaluator.mme import ALL_SUBTASKS, QUESTIONS_PER_IMAGE
from services.evaluator.mmhal import QUESTION_TYPES
from services.evaluator.mmvet import CAPABILITIES
from services.pair_builder.agreement import JudgePairAgreement, JudgeRatings
from shared.contracts import events as ev
from shared.contracts.topics import TRAIN_PROGRESS
from shared.ledger import JudgeSpend, Ledger
from shared.ledger.tables import JobRow
from shared.settings import CommonSettings
from vlf.report.results_table import build_results_table

RATING_LEVELS = (1, 2, 3, 4, 5)
MARGIN_BIN_WIDTH = 0.5
PROGRESS_READ_TIMEOUT_S = 60.0

# EvalResult (benchmark, metric) -> results-table column (see vlf/report/results_table.py).
EVAL_COLUMNS: dict[tuple[str, str], str] = {
    ("mme", "perception"): "mme_perception",
    ("mme", "cognition"): "mme_cognition",
    ("mmhal", "average"): "mmhal_score",
    ("mmhal", "hallucination_rate"): "mmhal_hallucination_rate",
    ("mmvet", "total"): "mmvet_total",
    ("preference_accuracy", "accuracy"): "preference_accuracy",
    ("greedy_accuracy", "accuracy"): "greedy_accuracy",
}
BASE_NAME, TUNED_NAME = "base", "tuned"
# Benchmark -> (title, its parts in the published order): the metrics a result holds per part.
BREAKDOWNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mme": ("MME per subtask (accuracy + accuracy+, 0-200)", ALL_SUBTASKS),
    "mmhal": ("MMHal-Bench per question type (rating 0-6)", QUESTION_TYPES),
    "mmvet": ("MM-Vet per capability (0-100)", CAPABILITIES),
}


class RatingStats(BaseModel):
    """One model's ratings on one aspect: counts of 1..5 (swap-mode means rounded) and the exact mean."""

    model_id: str
    aspect: str
    histogram: list[int] = Field(description="Counts of ratings 1..5, index 0 = rating 1.")
    mean: float | None
    n: int
    unrated: int = Field(description="Answers the judge gave no number for on this aspect.")


class PositionBias(BaseModel):
    position: int
    mean_rating: float
    n: int


class SelfAgreement(BaseModel):
    mean: float
    n: int


class MarginBin(BaseModel):
    low: float
    high: float
    count: int


class TrainPoint(BaseModel):
    step: int
    loss: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None


class TrainCurve(BaseModel):
    job_id: str
    status: str
    total_steps: int
    points: list[TrainPoint]


class BreakdownRow(BaseModel):
    part: str
    base: float | None
    tuned: float | None


class Breakdown(BaseModel):
    """One benchmark's parts (MME subtasks, MMHal question types, MM-Vet capabilities), base vs tuned."""

    benchmark: str
    title: str
    rows: list[BreakdownRow]


class ReportData(BaseModel):
    generated_at: datetime
    demo_note: bool
    counts: dict[str, int]
    dlq_sizes: dict[str, int] | None = Field(None, description="None: the report was built without Kafka.")
    judge_spend: dict[str, JudgeSpend]
    ratings: list[RatingStats]
    position_bias: list[PositionBias]
    self_agreement: SelfAgreement | None
    judge_agreement: list[JudgePairAgreement] = Field(
        description="Every two judges that rated answers in common: weighted kappa, order agreement."
    )
    margins: list[MarginBin]
    train_curves: list[TrainCurve]
    progress_from_kafka: bool
    results_table: dict | None = Field(None, description="build_results_table(base, tuned), if any results.")
    breakdowns: list[Breakdown] = Field(default_factory=list, description="Per-part scores, base vs tuned.")
    mme_without_yes_no: dict[str, int] = Field(
        default_factory=dict,
        description="Base or tuned model -> MME questions, when it answered none of them yes or no.",
    )


def rating_stats(annotations: Iterable[ev.Annotation]) -> list[RatingStats]:
    ratings: dict[tuple[str, str], list[float]] = defaultdict(list)
    unrated: dict[tuple[str, str], int] = defaultdict(int)
    for annotation in annotations:
        for rated in annotation.rated:
            for aspect, rating in rated.ratings.items():
                key = (rated.model_id, str(aspect))
                if rating.rating is None:
                    unrated[key] += 1
                else:
                    ratings[key].append(rating.rating)
    stats = []
    for model_id, aspect in sorted(set(ratings) | set(unrated)):
        values = ratings[(model_id, aspect)]
        rounded = [math.floor(v + 0.5) for v in values]
        stats.append(
            RatingStats(
                model_id=model_id,
                aspect=aspect,
                histogram=[rounded.count(level) for level in RATING_LEVELS],
                mean=sum(values) / len(values) if values else None,
                n=len(values),
                unrated=unrated[(model_id, aspect)],
            )
        )
    return stats


def position_bias(annotations: Iterable[ev.Annotation]) -> list[PositionBias]:
    """Mean rating (all aspects) by the position the judge saw an answer in: a fair judge is flat."""
    by_position: dict[int, list[float]] = defaultdict(list)
    for annotation in annotations:
        for rated in annotation.rated:
            by_position[rated.shown_position] += [
                r.rating for r in rated.ratings.values() if r.rating is not None
            ]
    return [
        PositionBias(position=p, mean_rating=sum(vs) / len(vs), n=len(vs))
        for p, vs in sorted(by_position.items())
        if vs
    ]


def self_agreement(annotations: Iterable[ev.Annotation]) -> SelfAgreement | None:
    values = [a.self_agreement for a in annotations if a.self_agreement is not None]
    return SelfAgreement(mean=sum(values) / len(values), n=len(values)) if values else None


def margin_histogram(margins: Iterable[float], width: float = MARGIN_BIN_WIDTH) -> list[MarginBin]:
    """Bins ``[k*width, (k+1)*width)`` from 0 to the largest margin."""
    counts: dict[int, int] = defaultdict(int)
    for margin in margins:
        counts[int(margin // width)] += 1
    if not counts:
        return []
    return [
        MarginBin(low=k * width, high=(k + 1) * width, count=counts.get(k, 0)) for k in range(max(counts) + 1)
    ]


def train_curves(jobs: Sequence[JobRow], progress: Iterable[ev.TrainProgress]) -> list[TrainCurve]:
    """Per training job, its progress by step: the topic's full history where given, plus the ledger's
    last progress (all a job row keeps)."""
    events: dict[str, list[ev.TrainProgress]] = defaultdict(list)
    for update in progress:
        events[update.job_id].append(update)
    for job in jobs:
        if job.progress and "step" in job.progress:
            events[job.id].append(ev.TrainProgress.model_validate(job.progress))
    status = {job.id: job.status for job in jobs}
    curves = []
    for job_id, updates in sorted(events.items()):
        by_step = {u.step: u for u in sorted(updates, key=lambda u: u.at) if u.step > 0}
        points = [
            TrainPoint(step=s, loss=u.loss, reward_margin=u.reward_margin, reward_accuracy=u.reward_accuracy)
            for s, u in sorted(by_step.items())
        ]
        latest = max(updates, key=lambda u: u.at)
        curves.append(
            TrainCurve(
                job_id=job_id,
                status=status.get(job_id, latest.status),
                total_steps=latest.total_steps,
                points=points,
            )
        )
    return curves


def eval_metrics(results: Iterable[ev.EvalResult]) -> dict[str, dict[str, float]]:
    """Model name -> results-table column -> value; a later completed result replaces an earlier one."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for result in results:
        if result.status != "completed":
            continue
        for metric, value in result.metrics.items():
            column = EVAL_COLUMNS.get((result.benchmark, metric))
            if column:
                table[result.model.name][column] = value
    return dict(table)


def breakdowns(results: Iterable[ev.EvalResult]) -> list[Breakdown]:
    """Per benchmark that "base" or "tuned" completed, its parts in published order; a later completed
    result replaces an earlier one, and a part neither model has is left out."""
    latest: dict[tuple[str, str], dict[str, float]] = {}
    for result in results:
        if result.status == "completed" and result.model.name in (BASE_NAME, TUNED_NAME):
            latest[(result.benchmark, result.model.name)] = result.metrics
    found = []
    for benchmark, (title, parts) in BREAKDOWNS.items():
        base, tuned = latest.get((benchmark, BASE_NAME), {}), latest.get((benchmark, TUNED_NAME), {})
        rows = [
            BreakdownRow(part=part, base=base.get(part), tuned=tuned.get(part))
            for part in parts
            if part in base or part in tuned
        ]
        if rows:
            found.append(Breakdown(benchmark=benchmark, title=title, rows=rows))
    return found


def mme_without_yes_no(results: Iterable[ev.EvalResult]) -> dict[str, int]:
    """Base or tuned models whose latest MME run got no yes/no answer at all (every score 0, for a
    reason the charts cannot show: usually a prompt or chat-template problem, not a weak model)."""
    latest: dict[str, ev.EvalResult] = {}
    for result in results:
        if result.status == "completed" and result.benchmark == "mme":
            latest[result.model.name] = result
    found = {}
    for name in (BASE_NAME, TUNED_NAME):
        subtasks = latest[name].details.get("per_subtask", {}) if name in latest else {}
        questions = sum(QUESTIONS_PER_IMAGE * subtask["images"] for subtask in subtasks.values())
        if questions and sum(subtask["other_answers"] for subtask in subtasks.values()) == questions:
            found[name] = questions
    return found


def judge_agreement(annotations: Iterable[ev.Annotation]) -> list[JudgePairAgreement]:
    ratings = JudgeRatings()
    for annotation in annotations:
        ratings.add(annotation)
    return ratings.agreement()


def results_table(metrics: dict[str, dict[str, float]]) -> dict | None:
    base, tuned = metrics.get(BASE_NAME, {}), metrics.get(TUNED_NAME, {})
    return build_results_table(base, tuned) if base or tuned else None


def read_train_progress(settings: CommonSettings) -> list[ev.TrainProgress]:
    """Every TrainProgress event on the topic, read from the beginning without a consumer group (the
    report must not move any service's offsets)."""
    name = settings.topic_namespace + TRAIN_PROGRESS.name
    consumer = KafkaConsumer(**settings.kafka_client_config(), group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or [])]
        if not partitions:
            return []
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        updates: list[ev.TrainProgress] = []
        deadline = time.monotonic() + PROGRESS_READ_TIMEOUT_S
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                updates += [ev.TrainProgress.model_validate_json(r.value) for r in records if r.value]
        return updates
    finally:
        consumer.close()


def gather_report(
    ledger: Ledger,
    *,
    progress: Sequence[ev.TrainProgress] | None = None,
    dlq_sizes: dict[str, int] | None = None,
    demo_note: bool = False,
) -> ReportData:
    """The report's data from the ledger; ``progress`` (the topic's history) fills in training curves."""
    return ReportData(
        generated_at=datetime.now(UTC),
        demo_note=demo_note,
        counts={
            "instructions": ledger.count(ev.Instruction),
            "responses": ledger.count(ev.Response),
            "annotations": ledger.count(ev.Annotation),
            "pairs": ledger.count(ev.Pair),
            "checkpoints": ledger.count(ev.Checkpoint),
            "eval results": ledger.count(ev.EvalResult),
        },
        dlq_sizes=dlq_sizes,
        judge_spend=ledger.judge_spend(),
        ratings=rating_stats(ledger.iter_facts(ev.Annotation)),
        position_bias=position_bias(ledger.iter_facts(ev.Annotation)),
        self_agreement=self_agreement(ledger.iter_facts(ev.Annotation)),
        judge_agreement=judge_agreement(ledger.iter_facts(ev.Annotation)),
        margins=margin_histogram(p.margin for p in ledger.iter_facts(ev.Pair)),
        train_curves=train_curves(ledger.jobs(kind="train"), progress or []),
        progress_from_kafka=progress is not None,
        results_table=results_table(eval_metrics(ledger.iter_facts(ev.EvalResult))),
        breakdowns=breakdowns(ledger.iter_facts(ev.EvalResult)),
        mme_without_yes_no=mme_without_yes_no(ledger.iter_facts(ev.EvalResult)),
    )
