"""Sampler settings (env prefix ``VLF_SAMPLER_``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import YamlOverlaySettings


class SamplerSettings(YamlOverlaySettings):
    model_config = SettingsConfigDict(env_prefix="VLF_SAMPLER_", extra="ignore")

    model_id: str = Field(description="Registry entry this process serves; consumer group vlf-sampler.<id>.")
    max_pixels: int = Field(40_000_000, ge=1, description="Images above this pixel count are refused.")
