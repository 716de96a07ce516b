"""Wiring: settings -> ledger -> handler -> Kafka runtime. ``python -m services.pair_builder``."""

from __future__ import annotations

from functools import partial

from services.pair_builder.handler import PairBuilderContext, handle_annotation
from services.pair_builder.settings import PairBuilderSettings
from shared.contracts.topics import ANNOTATIONS, PAIR_BUILDER_GROUP, PAIRS
from shared.ledger import Ledger
from shared.runtime.kafka_runtime import ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings


def main() -> None:
    common = CommonSettings()
    settings = PairBuilderSettings()
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    ctx = PairBuilderContext(
        ledger=ledger, rule=settings.rule(), heldout_fraction=settings.heldout_fraction, seed=settings.seed
    )
    definition = ServiceDefinition(
        name="pair-builder",
        group_id=PAIR_BUILDER_GROUP,
        routes={ANNOTATIONS.name: partial(handle_annotation, ctx=ctx)},
        produces=(PAIRS,),
        ready_checks={"ledger": ledger.ping},
    )
    try:
        serve(definition, common, settings)
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
