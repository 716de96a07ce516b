"""What the pipeline has done so far: ledger counts per stage, jobs, spend, DLQ sizes, lag."""

from __future__ import annotations

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition
from pydantic import BaseModel

from shared.contracts import events as ev
from shared.contracts.topics import ALL_TOPICS
from shared.ledger import JudgeSpend, Ledger
from shared.registry import Registry
from shared.settings import CommonSettings


class PipelineStatus(BaseModel):
    stages: dict[str, int]
    jobs: list[dict]
    judge_spend: dict[str, JudgeSpend]
    model_spend_usd: dict[str, float]
    dlq_sizes: dict[str, int]
    consumer_lag: dict[str, int]


def ledger_stages(ledger: Ledger) -> dict[str, int]:
    return {
        "submitted": ledger.count(ev.Instruction),
        "answered": ledger.count(ev.Response),
        "rated": ledger.count(ev.Annotation),
        "paired": ledger.count(ev.Pair),
        "checkpoints": ledger.count(ev.Checkpoint),
        "eval_results": ledger.count(ev.EvalResult),
    }


def model_spend_usd(tokens: dict[str, tuple[int, int]], registry: Registry) -> dict[str, float]:
    """Spend of the priced models (API models such as GPT-4V) at the registry's prices; the judges'
    is recorded per call instead. Models no longer in the registry are left out."""
    spend = {}
    for entry in registry.models:
        if entry.id in tokens and (entry.price_per_1k_input or entry.price_per_1k_output):
            spend[entry.id] = entry.cost_usd(*tokens[entry.id])
    return spend


def kafka_numbers(settings: CommonSettings) -> tuple[dict[str, int], dict[str, int]]:
    """(DLQ name -> records in it, consumer group -> total lag) for this namespace's topics."""
    ns = settings.topic_namespace
    client = settings.kafka_client_config()
    admin = KafkaAdminClient(**client)
    consumer = KafkaConsumer(**client, enable_auto_commit=False)
    try:
        existing = set(admin.list_topics())
        names = [ns + t.name for t in ALL_TOPICS] + [ns + t.dlq for t in ALL_TOPICS]
        partitions = [
            TopicPartition(name, p)
            for name in names
            if name in existing
            for p in (consumer.partitions_for_topic(name) or [])
        ]
        ends = consumer.end_offsets(partitions) if partitions else {}
        starts = consumer.beginning_offsets(partitions) if partitions else {}
        dlq_sizes: dict[str, int] = {}
        for tp, end in ends.items():
            if tp.topic.endswith(".dlq"):
                dlq_sizes[tp.topic] = dlq_sizes.get(tp.topic, 0) + end - starts.get(tp, 0)
        lag: dict[str, int] = {}
        for group, _protocol in admin.list_consumer_groups():
            if not group.startswith("vlf-"):
                continue
            committed = {
                tp: o.offset for tp, o in admin.list_consumer_group_offsets(group).items() if tp in ends
            }
            if not committed:
                continue
            # Partitions of the group's topics it has not committed yet count from their start.
            group_topics = {tp.topic for tp in committed}
            lag[group] = sum(
                max(0, end - committed.get(tp, starts.get(tp, 0)))
                for tp, end in ends.items()
                if tp.topic in group_topics
            )
        return dlq_sizes, lag
    finally:
        consumer.close()
        admin.close()


def pipeline_status(
    ledger: Ledger, settings: CommonSettings, registry: Registry | None = None, *, with_kafka: bool = True
) -> PipelineStatus:
    """``registry``: for the models' prices (no model spend without it)."""
    dlq, lag = kafka_numbers(settings) if with_kafka else ({}, {})
    jobs = [
        {
            "id": j.id,
            "kind": j.kind,
            "status": j.status,
            "step": (j.progress or {}).get("step"),
            "error": j.error,
        }
        for j in ledger.jobs()
    ]
    return PipelineStatus(
        stages=ledger_stages(ledger),
        jobs=jobs,
        judge_spend=ledger.judge_spend(),
        model_spend_usd=model_spend_usd(ledger.model_tokens(), registry) if registry else {},
        dlq_sizes=dlq,
        consumer_lag=lag,
    )
