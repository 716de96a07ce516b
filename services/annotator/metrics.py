"""Judge metrics, per judge, on the service's registry."""

from prometheus_client import CollectorRegistry, Counter, Histogram


class JudgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "vlf_judge_calls", "Paid judge calls, by purpose.", ["judge", "purpose"], registry=registry
        )
        self.reused = Counter(
            "vlf_judge_replies_reused",
            "Judge replies found in the ledger (not paid again).",
            ["judge"],
            registry=registry,
        )
        self.tokens = Counter(
            "vlf_judge_tokens",
            "Judge tokens; direction in: prompt, out: completion, cached_in: the prompt tokens the "
            "provider served from its cache (part of in).",
            ["judge", "direction"],
            registry=registry,
        )
        self.spend = Counter("vlf_judge_spend_usd", "Judge spend in USD.", ["judge"], registry=registry)
        self.parse_failures = Counter(
            "vlf_judge_parse_failures", "Unreadable judge replies.", ["judge"], registry=registry
        )
        self.repairs = Counter(
            "vlf_judge_repairs", "Repair requests that fixed a reply.", ["judge"], registry=registry
        )
        self.latency = Histogram(
            "vlf_judge_latency_seconds", "Judge call latency.", ["judge"], registry=registry
        )
        self.sweep_failures = Counter(
            "vlf_judge_sweep_failures",
            "Gather-timeout ratings that failed, by kind: retryable (tried again next sweep), permanent or "
            "error (an unexpected one; both given up until another answer arrives).",
            ["judge", "kind"],
            registry=registry,
        )
        self.batch_requests = Counter(
            "vlf_judge_batch_requests",
            "Judge calls through the Batch API, by outcome: queued, replied, failed (made live).",
            ["judge", "outcome"],
            registry=registry,
        )
        self.skipped = Counter(
            "vlf_judge_skipped", "Instructions not rated, by reason.", ["judge", "reason"], registry=registry
        )
