"""The ``VLF_*`` environment variables the services read, for checking what deployments set.

Settings classes ignore variables they do not define, so a misspelt or stale name in the chart or
the compose file is silently dropped; the deployment tests compare against this list instead.
"""

from __future__ import annotations

from services.annotator.settings import AnnotatorSettings
from services.evaluator.settings import EvaluatorSettings
from services.pair_builder.settings import PairBuilderSettings
from services.sampler.settings import SamplerSettings
from services.trainer.__main__ import TRAINER_JOB_ID_ENV
from services.trainer.settings import TrainerSettings
from shared.settings import CommonSettings, EnvConfigFile

SETTINGS = (
    CommonSettings,
    EnvConfigFile,
    SamplerSettings,
    AnnotatorSettings,
    PairBuilderSettings,
    TrainerSettings,
    EvaluatorSettings,
)


def service_env_names() -> set[str]:
    """Every name a settings class reads, plus the trainer run's id (read directly, set per run)."""
    names = {cls.model_config["env_prefix"] + field.upper() for cls in SETTINGS for field in cls.model_fields}
    return names | {TRAINER_JOB_ID_ENV}
