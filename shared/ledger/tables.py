"""Ledger tables. Fact tables hold one immutable event each, keyed by its deterministic id, with the
columns that queries filter on pulled out next to the full JSON payload. ``jobs`` is the one
mutable table: the status of long jobs, owned by the service that runs them, beside the two tables
of judge requests in flight through a provider's Batch API.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class InstructionRow(Base):
    __tablename__ = "instructions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(128), default="", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)


class ResponseRow(Base):
    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    instruction_id: Mapped[str] = mapped_column(String(128), index=True)
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)


class AnnotationRow(Base):
    __tablename__ = "annotations"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    instruction_id: Mapped[str] = mapped_column(String(128), index=True)
    judge_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)


class JudgeCallRow(Base):
    """A paid judge reply, written before it is parsed or anything is committed: never paid twice."""

    __tablename__ = "judge_calls"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    instruction_id: Mapped[str] = mapped_column(String(128), index=True)
    judge_id: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    raw_reply: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    # The parts of cost_usd; None in rows kept before they were recorded (migration 0003).
    input_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    cached_input_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The provider's batch the reply came from; None for a live call (migration 0004).
    batch_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JudgeBatchRequestRow(Base):
    """A judge call waiting for the provider's Batch API, kept under its judge call id before the
    message that asked for it is committed: queued, then in a batch, then done or failed (a failed
    one is made live). ``body`` (the chat completion request) is dropped once the batch is created."""

    __tablename__ = "judge_batch_requests"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    judge_id: Mapped[str] = mapped_column(String(128), index=True)
    instruction_id: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    batch_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    body: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JudgeBatchRow(Base):
    """One upload to the Batch API, recorded under our own key before anything is sent: the key is
    the uploaded file's name and the batch's metadata, so a restart finds what it sent."""

    __tablename__ = "judge_batches"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    judge_id: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    file_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PairRow(Base):
    __tablename__ = "pairs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    instruction_id: Mapped[str] = mapped_column(String(128), index=True)
    strategy: Mapped[str] = mapped_column(String(64), index=True)
    split: Mapped[str] = mapped_column(String(16), index=True)
    margin: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)


class EvalResultRow(Base):
    __tablename__ = "eval_results"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    eval_id: Mapped[str] = mapped_column(String(128), index=True)
    benchmark: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)


class PredictionRow(Base):
    """Cached benchmark predictions, so a crashed evaluation resumes without regenerating."""

    __tablename__ = "predictions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_key: Mapped[str] = mapped_column(String(256), index=True)
    benchmark: Mapped[str] = mapped_column(String(64))
    item_id: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    """Status of a long job (training or evaluation); the only rows that change after insert."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict] = mapped_column(JSON)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
