"""Pair builder settings (env prefix ``VLF_PAIRS_``)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.pair_builder.rules import PairRule, strategy_aspects
from shared.settings import YamlOverlaySettings


class PairBuilderSettings(YamlOverlaySettings):
    """Defaults are the paper's: every non-tied pair, no margin, 0.5% held out with seed 42."""

    model_config = SettingsConfigDict(env_prefix="VLF_PAIRS_", extra="ignore")

    # --- which pairs ---
    strategy: str = Field(
        "vlfeedback",
        description="vlfeedback | min_margin | best_vs_worst | agreement | aspect:<Aspect name> "
        "(aspect:Helpfulness).",
    )
    min_margin: float = Field(0.0, ge=0, description="Smallest score gap kept by the min_margin strategy.")
    max_pairs_per_instruction: int | None = Field(
        None, ge=1, description="Keep at most this many pairs per instruction (largest margins)."
    )
    # --- which judges ---
    judge_ids: list[str] = Field(
        default_factory=list,
        description="Judges whose ratings are averaged; pairs wait until all of them annotated. "
        "Empty: every annotation makes pairs from its own judge alone. Env: a JSON list.",
    )
    quorum: int | None = Field(
        None,
        ge=2,
        description="Strategy agreement: keep a pair only if this many judges order it the same way "
        "(unset: all of judge_ids).",
    )
    # --- held-out split ---
    heldout_fraction: float = Field(0.005, ge=0, le=1, description="Share of instructions held out.")
    seed: int = Field(42, description="Seed of the held-out split hash.")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        strategy_aspects(value)
        return value

    @model_validator(mode="after")
    def _margin_matches_strategy(self) -> PairBuilderSettings:
        if (self.strategy == "min_margin") != (self.min_margin > 0):
            raise ValueError(
                f"min_margin > 0 goes with strategy 'min_margin' and only with it "
                f"(got strategy={self.strategy!r}, min_margin={self.min_margin})"
            )
        self.rule()  # the rule's own checks (the agreement quorum) fail at start-up, not per message
        return self

    def rule(self) -> PairRule:
        return PairRule(
            strategy=self.strategy,
            min_margin=self.min_margin,
            max_pairs_per_instruction=self.max_pairs_per_instruction,
            judge_ids=tuple(self.judge_ids),
            quorum=self.quorum,
        )
