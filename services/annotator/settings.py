"""Annotator settings (env prefix ``VLF_ANNOTATOR_``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import YamlOverlaySettings


class AnnotatorSettings(YamlOverlaySettings):
    model_config = SettingsConfigDict(env_prefix="VLF_ANNOTATOR_", extra="ignore")

    judge_id: str = Field(
        description="Registry judge this process serves; consumer group vlf-annotator.<id>."
    )
    gather_timeout_s: float = Field(
        600.0, gt=0, description="Rate what arrived (at least min_answers) this long after the newest answer."
    )
    min_answers: int = Field(2, ge=1, description="Fewest answers worth rating after the timeout.")
    sweep_interval_s: float = Field(10.0, gt=0, description="How often the gather timeout is checked.")
    # --- batch judges (registry ``batch: true``) ---
    batch_max_requests: int = Field(
        1000, ge=1, description="Most judge calls in one Batch API upload (OpenAI allows 50,000)."
    )
    batch_max_wait_s: float = Field(
        300.0, ge=0, description="Send a smaller batch once its oldest call has waited this long."
    )
    batch_poll_interval_s: float = Field(30.0, gt=0, description="How often batches are sent and polled.")
