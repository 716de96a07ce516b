"""Sampler settings (env prefix ``VLF_SAMPLER_``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.registry import ModelEntry
from shared.settings import CommonSettings, YamlOverlaySettings


class SamplerSettings(YamlOverlaySettings):
    model_config = SettingsConfigDict(env_prefix="VLF_SAMPLER_", extra="ignore")

    model_id: str = Field(description="Registry entry this process serves; consumer group vlf-sampler.<id>.")
    max_pixels: int = Field(40_000_000, ge=1, description="Images above this pixel count are refused.")


def with_lanes_for(common: CommonSettings, model: ModelEntry) -> CommonSettings:
    """At least twice as many lanes as the model takes calls at once (and a buffer twice the lanes).

    With one lane per call slot, each slot idles while its lane does the message's ledger and Kafka
    work (~30 ms a message at 64 lanes); with twice as many, other lanes' calls fill it. Measured
    with ``bench/bench_sampler.py`` at 64 calls of 200 ms, the call replaced by a sleep: 0.83 ->
    0.95 of the ideal rate. A larger ``VLF_MAX_IN_FLIGHT`` still wins.
    """
    lanes = max(common.max_in_flight, 2 * model.concurrency)
    return common.model_copy(
        update={"max_in_flight": lanes, "max_buffered": max(common.max_buffered, 2 * lanes)}
    )
