"""Settings every service shares (env prefix ``VLF_``), optionally overlaid by a YAML file.

Each service adds its own class with its own prefix (``VLF_SAMPLER_`` ...); both are built in the
service's ``main()``, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

RECEIVE_MESSAGE_MAX_BYTES = 8 * 1024 * 1024


class SettingsInvalid(ValueError):
    """Settings failed validation. The message names each field and why, never the value given:
    pydantic's own message repeats the input (every setting, the SASL password too) into the log."""


def describe_invalid(settings_cls: type[BaseSettings], error: ValidationError) -> str:
    """One line per refused field, without inputs, and where the values came from."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    lines = [
        f"invalid {settings_cls.__name__} (environment {prefix}*, or the YAML file VLF_CONFIG_FILE names):"
    ]
    for problem in error.errors(include_input=False, include_url=False, include_context=False):
        lines.append(f"  {'.'.join(map(str, problem['loc'])) or 'settings'}: {problem['msg']}")
    return "\n".join(lines)


def mask_url_password(value: str) -> str:
    """``value`` with a URL's password replaced by ``***``, for showing settings: the ledger, blob
    store or a backend URL may carry credentials (``postgresql://user:password@host/db``)."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:  # not a URL (e.g. an unbalanced '[')
        return value
    if not password:
        return value
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


class YamlOverlaySettings(BaseSettings):
    """Base class: environment first, then the YAML file named by ``VLF_CONFIG_FILE`` (if any).

    A validation error is raised as ``SettingsInvalid``, whose message never shows a value.
    """

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsInvalid(describe_invalid(type(self), error)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = EnvConfigFile().config_file
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, file_secret_settings]
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


class EnvConfigFile(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VLF_")
    config_file: Path | None = Field(None, description="YAML file with settings (any section's field names).")


class CommonSettings(YamlOverlaySettings):
    """Connection and runtime settings shared by every service. Defaults run on one machine."""

    model_config = SettingsConfigDict(env_prefix="VLF_", extra="ignore")

    # --- Kafka ---
    kafka_bootstrap_servers: str = Field("127.0.0.1:19092", description="Comma-separated host:port list.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_replication_factor: int = Field(1, ge=1, description="For topics this service creates.")
    topic_namespace: str = Field(
        "",
        pattern=r"^[a-zA-Z0-9._-]*$",
        description="Prefix of every topic name: isolates environments on one cluster.",
    )

    # --- storage ---
    ledger_url: str = Field(
        "sqlite:///.vlf/ledger.db", description="SQLAlchemy URL (PostgreSQL in a cluster)."
    )
    blob_url: str = Field(".vlf/blobs", description="Local folder or fsspec URL of the image blob store.")
    registry_path: Path = Field(Path("registry.yaml"), description="YAML registry of models and judges.")

    # --- runtime ---
    max_in_flight: int = Field(8, ge=1, description="Messages handled at once (per-key order is kept).")
    max_buffered: int = Field(
        64, ge=1, description="Messages given to lanes and not yet finished (a rebalance waits for them)."
    )
    retry_attempts: int = Field(3, ge=1, description="Tries of a message failing with a retryable error.")
    retry_backoff_s: float = Field(0.5, gt=0, description="First backoff; doubles per try, with jitter.")
    commit_interval_s: float = Field(1.0, gt=0)
    shutdown_grace_s: float = Field(20.0, ge=0, description="On SIGTERM, time to finish fetched messages.")
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)

    # --- HTTP probes and logs ---
    http_host: str = Field(
        "127.0.0.1",
        description="Address the HTTP server binds: loopback on a workstation; the images and the chart set "
        "0.0.0.0 so the kubelet's probes and Prometheus reach the pod IP.",
    )
    http_port: int = Field(8080, ge=0, le=65535)
    log_json: bool = False
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _sasl_complete(self) -> CommonSettings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol={self.kafka_security_protocol} needs kafka_sasl_mechanism, "
                f"kafka_sasl_username and kafka_sasl_password (got mechanism={self.kafka_sasl_mechanism!r}, "
                f"username={self.kafka_sasl_username!r}, password set={self.kafka_sasl_password is not None})"
            )
        return self

    def kafka_client_config(self) -> dict:
        """Keyword arguments shared by kafka-python's consumer, producer and admin client."""
        config: dict = {
            "bootstrap_servers": self.kafka_bootstrap_servers.split(","),
            "security_protocol": self.kafka_security_protocol,
            # A dead letter is a payload of up to the broker's message size plus our headers: read frames
            # larger than kafka-python's 1,000,000-byte default so no DLQ reader chokes on one.
            "receive_message_max_bytes": RECEIVE_MESSAGE_MAX_BYTES,
        }
        if self.kafka_sasl_mechanism:
            config["sasl_mechanism"] = self.kafka_sasl_mechanism
            config["sasl_plain_username"] = self.kafka_sasl_username
            config["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_ssl_cafile:
            config["ssl_cafile"] = str(self.kafka_ssl_cafile)
        return config
