"""The ledger: immutable facts keyed by deterministic ids, plus the status of long jobs.

Writes of facts are insert-or-ignore on the id, so replaying a message changes nothing. SQLite (WAL)
serves one machine, PostgreSQL a cluster, through the same code.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pydantic_core
from alembic import command
from alembic.config import Config
from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, case, create_engine, event, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.batching import Batcher
from shared.contracts import events as ev
from shared.contracts.ids import stable_hash
from shared.ledger import tables as t
from shared.ledger.errors import LedgerUnavailable
from shared.registry import CallCost

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


# table -> row id -> column values
Rows = dict[Any, dict[str, dict[str, Any]]]
# The tables read per instruction, and the order of their rows.
_READ_ORDER = {
    t.ResponseRow: t.ResponseRow.id,
    t.AnnotationRow: t.AnnotationRow.judge_id,
    t.PairRow: t.PairRow.id,
}


class JudgeSpend(BaseModel):
    """One judge's paid calls. The parts leave out calls kept before they were recorded (ledger
    migration 0003), which count in ``total_usd`` only."""

    calls: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    total_usd: float
    input_usd: float = Field(description="Prompt tokens at the full input price.")
    cached_input_usd: float = Field(description="Prompt tokens served from the provider's cache.")
    output_usd: float
    batch_usd: float = Field(0.0, description="The part of total_usd paid at the Batch API's rate.")


BATCH_WAITING = ("queued", "batched")  # batch request states whose instruction waits for the reply


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _fact_row(event: ev.Event) -> tuple[type[t.Base], dict[str, Any]]:
    """Map an event to its fact table and column values."""
    payload = event.model_dump(mode="json")
    match event:
        case ev.Instruction():
            return t.InstructionRow, dict(
                id=event.instruction_id, source=event.source, created_at=event.submitted_at, payload=payload
            )
        case ev.Response():
            return t.ResponseRow, dict(
                id=event.response_id,
                instruction_id=event.instruction_id,
                model_id=event.model_id,
                created_at=event.created_at,
                payload=payload,
            )
        case ev.Annotation():
            return t.AnnotationRow, dict(
                id=event.annotation_id,
                instruction_id=event.instruction_id,
                judge_id=event.judge_id,
                created_at=event.created_at,
                payload=payload,
            )
        case ev.Pair():
            return t.PairRow, dict(
                id=event.pair_id,
                instruction_id=event.instruction_id,
                strategy=event.strategy,
                split=event.split,
                margin=event.margin,
                created_at=event.created_at,
                payload=payload,
            )
        case ev.Checkpoint():
            return t.CheckpointRow, dict(
                id=event.checkpoint_id, job_id=event.job_id, created_at=event.created_at, payload=payload
            )
        case ev.EvalResult():
            return t.EvalResultRow, dict(
                id=event.result_id,
                eval_id=event.eval_id,
                benchmark=event.benchmark,
                created_at=event.created_at,
                payload=payload,
            )
    raise TypeError(f"{type(event).__name__} is not a ledger fact (jobs are recorded with upsert_job)")


def fact_rows(facts: tuple[ev.Event, ...]) -> Rows:
    """The rows ``Ledger.insert_new`` writes for these facts (a fact given twice is one row)."""
    rows: Rows = {}
    for fact in facts:
        table, values = _fact_row(fact)
        rows.setdefault(table, {}).setdefault(values["id"], values)
    return rows


class Ledger:
    """One handle per process; thread-safe (a session per call)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Calls from concurrent handler lanes share transactions (see ``Batcher``).
        self._writes = Batcher(self.insert_new)
        self._reads = {table: Batcher(partial(self.select_payloads, table)) for table in _READ_ORDER}
        # Built once per table: building the statement again for every batch (insert, conflict
        # clause, RETURNING, their cache key) took a quarter of a one-message write's CPU.
        self._inserts: dict[Any, Any] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision; safe when several processes start at once."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self._migration_lock(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def ping(self) -> None:
        with self._session() as s:
            s.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with _outages_as_unavailable(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction: the per-message paths need no ORM session."""
        with _outages_as_unavailable(), self.engine.begin() as connection:
            yield connection

    # --- facts ----------------------------------------------------------------------------------

    def record(self, *facts: ev.Event) -> int:
        """Insert facts that are not there yet, in one transaction; returns how many were new.

        Concurrent calls from other threads may share that transaction (``Batcher``); each returns
        once its facts are committed."""
        return self._writes.call(fact_rows(facts))

    def insert_new(self, batch: list[Rows]) -> list[int]:
        """One multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING id per table (SQLAlchemy's
        insertmanyvalues) for the whole batch; a new row counts for the first call that wrote it."""
        merged: Rows = {}
        for rows in batch:
            for table, by_id in rows.items():
                for row_id, values in by_id.items():
                    merged.setdefault(table, {}).setdefault(row_id, values)
        new: set[tuple[Any, str]] = set()
        with self._transaction() as connection:
            for table, by_id in merged.items():
                ids = connection.execute(self._insert_new_rows(table), list(by_id.values())).scalars()
                new.update((table, row_id) for row_id in ids)
        counts = []
        for rows in batch:
            mine = {(table, row_id) for table, by_id in rows.items() for row_id in by_id} & new
            counts.append(len(mine))
            new -= mine
        return counts

    def _insert_new_rows(self, table: Any) -> Any:
        """INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id for ``table``, in this dialect."""
        statement = self._inserts.get(table)
        if statement is None:
            insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
            statement = insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.id)
            self._inserts[table] = statement
        return statement

    def instruction(self, instruction_id: str) -> ev.Instruction | None:
        with self._session() as s:
            row = s.get(t.InstructionRow, instruction_id)
        return ev.Instruction.model_validate(row.payload) if row else None

    def responses_for(self, instruction_id: str) -> list[ev.Response]:
        payloads = self._payloads(t.ResponseRow, instruction_id)
        return [ev.Response.model_validate(p) for p in payloads]

    def annotations_for(self, instruction_id: str) -> list[ev.Annotation]:
        payloads = self._payloads(t.AnnotationRow, instruction_id)
        return [ev.Annotation.model_validate(p) for p in payloads]

    def pairs_for(self, instruction_id: str) -> list[ev.Pair]:
        return [ev.Pair.model_validate(p) for p in self._payloads(t.PairRow, instruction_id)]

    def _payloads(self, table: Any, instruction_id: str) -> list[dict]:
        return self._reads[table].call(instruction_id)

    def select_payloads(self, table: Any, instruction_ids: list[str]) -> list[list[dict]]:
        """The payloads of each instruction's rows of ``table``, for a batch of concurrent reads."""
        query = (
            select(table.instruction_id, table.payload)
            .where(table.instruction_id.in_(set(instruction_ids)))
            .order_by(_READ_ORDER[table])
        )
        found: dict[str, list[dict]] = {}
        with self._transaction() as connection:
            for instruction_id, payload in connection.execute(query):
                found.setdefault(instruction_id, []).append(payload)
        return [found.get(instruction_id, []) for instruction_id in instruction_ids]

    def iter_facts(self, model: type[ev.Event], batch_size: int = 1000, **filters: Any) -> Iterator[ev.Event]:
        """Stream every fact of one kind (optionally filtered on its indexed columns), oldest first."""
        table = {
            ev.Instruction: t.InstructionRow,
            ev.Response: t.ResponseRow,
            ev.Annotation: t.AnnotationRow,
            ev.Pair: t.PairRow,
            ev.Checkpoint: t.CheckpointRow,
            ev.EvalResult: t.EvalResultRow,
        }[model]
        query = select(table.payload).order_by(table.created_at, table.id)
        for column, value in filters.items():
            query = query.where(getattr(table, column) == value)
        with self.engine.connect() as conn:
            for payload in conn.execution_options(yield_per=batch_size).execute(query).scalars():
                yield model.model_validate(payload)

    def count(self, model: type[ev.Event], **filters: Any) -> int:
        table = {
            ev.Instruction: t.InstructionRow,
            ev.Response: t.ResponseRow,
            ev.Annotation: t.AnnotationRow,
            ev.Pair: t.PairRow,
            ev.Checkpoint: t.CheckpointRow,
            ev.EvalResult: t.EvalResultRow,
        }[model]
        query = select(func.count()).select_from(table)
        for column, value in filters.items():
            query = query.where(getattr(table, column) == value)
        with self._session() as s:
            return s.scalar(query) or 0

    def unrated_instructions(
        self,
        judge_id: str,
        settled_before: datetime,
        min_answers: int = 1,
        after: str | None = None,
        limit: int = 500,
    ) -> list[tuple[str, int]]:
        """(instruction id, answers) of instructions with at least ``min_answers`` answers but no
        rating by ``judge_id`` whose newest answer is older than ``settled_before`` (the annotator's
        gather timeout), in id order from after ``after``: a page of at most ``limit``, so a sweep
        pages through all of them. Instructions waiting for a batch of that judge are left out."""
        rated = select(t.AnnotationRow.instruction_id).where(t.AnnotationRow.judge_id == judge_id)
        waiting = select(t.JudgeBatchRequestRow.instruction_id).where(
            t.JudgeBatchRequestRow.judge_id == judge_id,
            t.JudgeBatchRequestRow.state.in_(BATCH_WAITING),
        )
        query = (
            select(t.ResponseRow.instruction_id, func.count())
            .where(t.ResponseRow.instruction_id.not_in(rated))
            .where(t.ResponseRow.instruction_id.not_in(waiting))
            .group_by(t.ResponseRow.instruction_id)
            .having(func.max(t.ResponseRow.created_at) < settled_before)
            .having(func.count() >= min_answers)
            .order_by(t.ResponseRow.instruction_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(t.ResponseRow.instruction_id > after)
        with self._session() as s:
            return [(instruction_id, answers) for instruction_id, answers in s.execute(query)]

    # --- paid judge replies ---------------------------------------------------------------------

    @staticmethod
    def judge_call_id(instruction_id: str, judge_id: str, purpose: str, response_ids: list[str]) -> str:
        """The id a judge reply is kept under: a reply about one set of answers is never reused for
        another (an answer that arrives later changes what the judge is shown, and where)."""
        return stable_hash("judge_call", instruction_id, judge_id, purpose, sorted(response_ids))

    def judge_reply(self, call_id: str) -> t.JudgeCallRow | None:
        with self._session() as s:
            return s.get(t.JudgeCallRow, call_id)

    def save_judge_reply(
        self,
        call_id: str,
        *,
        instruction_id: str,
        judge_id: str,
        purpose: str,
        raw_reply: str,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        completion_tokens: int,
        cost: CallCost,
        batch_id: str | None = None,
    ) -> None:
        row = dict(
            id=call_id,
            instruction_id=instruction_id,
            judge_id=judge_id,
            purpose=purpose,
            raw_reply=raw_reply,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached_prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost.total_usd,
            input_cost_usd=cost.input_usd,
            cached_input_cost_usd=cost.cached_input_usd,
            output_cost_usd=cost.output_usd,
            batch_id=batch_id,
            created_at=_now(),
        )
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self._session() as s:
            s.execute(insert(t.JudgeCallRow).values(**row).on_conflict_do_nothing(index_elements=["id"]))

    def model_tokens(self) -> dict[str, tuple[int, int]]:
        """Per model: (prompt, completion) tokens of all its recorded answers."""
        prompt = t.ResponseRow.payload["prompt_tokens"].as_integer()
        completion = t.ResponseRow.payload["completion_tokens"].as_integer()
        query = select(t.ResponseRow.model_id, func.sum(prompt), func.sum(completion)).group_by(
            t.ResponseRow.model_id
        )
        with self._session() as s:
            rows = s.execute(query).all()
        return {model: (int(p or 0), int(c or 0)) for model, p, c in rows}

    def judge_spend(self) -> dict[str, JudgeSpend]:
        """Per judge: its paid calls, their tokens and their cost in parts."""
        row = t.JudgeCallRow
        sums = (
            row.prompt_tokens,
            row.cached_prompt_tokens,
            row.completion_tokens,
            row.cost_usd,
            row.input_cost_usd,
            row.cached_input_cost_usd,
            row.output_cost_usd,
            case((row.batch_id.is_not(None), row.cost_usd), else_=0.0),
        )
        query = select(row.judge_id, func.count(), *(func.sum(c) for c in sums)).group_by(row.judge_id)
        with self._session() as s:
            rows = s.execute(query).all()
        return {
            judge: JudgeSpend(
                calls=calls,
                prompt_tokens=int(prompt or 0),
                cached_prompt_tokens=int(cached or 0),
                completion_tokens=int(completion or 0),
                total_usd=float(total or 0),
                input_usd=float(inp or 0),
                cached_input_usd=float(cached_inp or 0),
                output_usd=float(out or 0),
                batch_usd=float(batch or 0),
            )
            for judge, calls, prompt, cached, completion, total, inp, cached_inp, out, batch in rows
        }

    # --- judge calls through a provider's Batch API ---------------------------------------------

    def queue_batch_request(
        self, call_id: str, *, judge_id: str, instruction_id: str, purpose: str, body: dict
    ) -> None:
        """Keep a judge call for the next batch (once: a call already queued stays as it is)."""
        row = dict(
            id=call_id,
            judge_id=judge_id,
            instruction_id=instruction_id,
            purpose=purpose,
            state="queued",
            batch_key=None,
            body=body,
            error=None,
            created_at=_now(),
        )
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self._session() as s:
            s.execute(
                insert(t.JudgeBatchRequestRow).values(**row).on_conflict_do_nothing(index_elements=["id"])
            )

    def batch_request(self, call_id: str) -> t.JudgeBatchRequestRow | None:
        with self._session() as s:
            return s.get(t.JudgeBatchRequestRow, call_id)

    def assemble_batch(self, judge_id: str, key: str, limit: int, queued_before: datetime) -> int:
        """Put the judge's oldest queued requests, at most ``limit``, into a new batch ``key``, once
        there are ``limit`` of them or the oldest was queued before ``queued_before``; returns how
        many (0: no batch yet)."""
        req = t.JudgeBatchRequestRow
        oldest_first = (
            select(req.id, req.created_at)
            .where(req.judge_id == judge_id, req.state == "queued")
            .order_by(req.created_at, req.id)
            .limit(limit)
        )
        with self._session() as s:
            queued = s.execute(oldest_first).all()
            if not queued or (len(queued) < limit and _aware(queued[0].created_at) >= queued_before):
                return 0
            ids = [row.id for row in queued]
            s.execute(update(req).where(req.id.in_(ids)).values(state="batched", batch_key=key))
            now = _now()
            s.add(
                t.JudgeBatchRow(
                    id=key,
                    judge_id=judge_id,
                    state="assembled",
                    requests=len(ids),
                    created_at=now,
                    updated_at=now,
                )
            )
            return len(ids)

    def batch_lines(self, key: str) -> list[tuple[str, dict]]:
        """(call id, request body) of every request of batch ``key``, in call id order."""
        req = t.JudgeBatchRequestRow
        query = select(req.id, req.body).where(req.batch_key == key).order_by(req.id)
        with self._session() as s:
            return [(call_id, body) for call_id, body in s.execute(query) if body is not None]

    def batch_call_ids(self, key: str) -> list[str]:
        req = t.JudgeBatchRequestRow
        with self._session() as s:
            return list(s.scalars(select(req.id).where(req.batch_key == key).order_by(req.id)).all())

    def open_batches(self, judge_id: str) -> list[t.JudgeBatchRow]:
        """The judge's batches not yet done, oldest first."""
        query = (
            select(t.JudgeBatchRow)
            .where(t.JudgeBatchRow.judge_id == judge_id, t.JudgeBatchRow.state != "done")
            .order_by(t.JudgeBatchRow.created_at, t.JudgeBatchRow.id)
        )
        with self._session() as s:
            return list(s.scalars(query).all())

    def set_batch_file(self, key: str, file_id: str) -> None:
        with self._session() as s:
            s.execute(
                update(t.JudgeBatchRow)
                .where(t.JudgeBatchRow.id == key)
                .values(file_id=file_id, updated_at=_now())
            )

    def set_batch_submitted(self, key: str, batch_id: str) -> None:
        """The provider holds the batch: its requests' bodies are no longer needed here."""
        with self._session() as s:
            s.execute(
                update(t.JudgeBatchRow)
                .where(t.JudgeBatchRow.id == key)
                .values(state="submitted", batch_id=batch_id, updated_at=_now())
            )
            s.execute(
                update(t.JudgeBatchRequestRow)
                .where(t.JudgeBatchRequestRow.batch_key == key)
                .values(body=None)
            )

    def finish_batch(self, key: str, failures: dict[str, str]) -> list[str]:
        """Mark batch ``key`` done: ``failures`` (call id -> reason) failed, its other requests done.
        Returns the ids of the instructions it served."""
        req = t.JudgeBatchRequestRow
        with self._session() as s:
            for call_id, reason in failures.items():
                s.execute(update(req).where(req.id == call_id).values(state="failed", error=reason))
            s.execute(update(req).where(req.batch_key == key, req.state == "batched").values(state="done"))
            s.execute(
                update(t.JudgeBatchRow)
                .where(t.JudgeBatchRow.id == key)
                .values(state="done", updated_at=_now())
            )
            query = (
                select(req.instruction_id).where(req.batch_key == key).distinct().order_by(req.instruction_id)
            )
            return list(s.scalars(query).all())

    def batch_request_counts(self, judge_id: str) -> dict[str, int]:
        """The judge's batch requests per state (queued, batched, done, failed)."""
        req = t.JudgeBatchRequestRow
        query = select(req.state, func.count()).where(req.judge_id == judge_id).group_by(req.state)
        with self._session() as s:
            return {state: count for state, count in s.execute(query)}

    # --- benchmark predictions ------------------------------------------------------------------

    def prediction(self, model_key: str, benchmark: str, item_id: str) -> str | None:
        with self._session() as s:
            row = s.get(t.PredictionRow, stable_hash(model_key, benchmark, item_id))
        return row.text if row else None

    def save_prediction(self, model_key: str, benchmark: str, item_id: str, text_: str) -> None:
        row = dict(
            id=stable_hash(model_key, benchmark, item_id),
            model_key=model_key,
            benchmark=benchmark,
            item_id=item_id,
            text=text_,
            created_at=_now(),
        )
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self._session() as s:
            s.execute(insert(t.PredictionRow).values(**row).on_conflict_do_nothing(index_elements=["id"]))

    # --- long jobs ------------------------------------------------------------------------------

    def create_job(self, job_id: str, kind: str, request: dict) -> bool:
        """Record a job as queued unless it exists; returns True when it was new."""
        now = _now()
        row = dict(
            id=job_id,
            kind=kind,
            status="queued",
            attempts=0,
            request=request,
            progress={},
            error=None,
            created_at=now,
            updated_at=now,
        )
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(t.JobRow).values(**row).on_conflict_do_nothing(index_elements=["id"])
        with self._session() as s:
            # RETURNING, not rowcount: on PostgreSQL the ORM reported a skipped insert as a row.
            return s.execute(statement.returning(t.JobRow.id)).first() is not None

    def update_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        progress: dict | None = None,
        error: str | None = None,
        attempts: int | None = None,
    ) -> None:
        with self._session() as s:
            row = s.get(t.JobRow, job_id)
            if row is None:
                raise KeyError(f"no job {job_id!r}")
            if status is not None:
                row.status = status
            if progress is not None:
                row.progress = progress
            if error is not None:
                row.error = error
            if attempts is not None:
                row.attempts = attempts
            row.updated_at = _now()

    def job(self, job_id: str) -> t.JobRow | None:
        with self._session() as s:
            return s.get(t.JobRow, job_id)

    def jobs(self, kind: str | None = None, status: str | None = None) -> list[t.JobRow]:
        query = select(t.JobRow).order_by(t.JobRow.created_at)
        if kind:
            query = query.where(t.JobRow.kind == kind)
        if status:
            query = query.where(t.JobRow.status == status)
        with self._session() as s:
            return list(s.scalars(query).all())


@contextmanager
def _outages_as_unavailable() -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        raise LedgerUnavailable(f"ledger unavailable: {exc.orig}") from exc


def _to_json(payload: Any) -> str:
    """JSON columns are written by pydantic-core's serializer: a fact's payload (a JSON-mode dump)
    serialises several times faster than with ``json.dumps``; NaN and infinities stay as they were."""
    return pydantic_core.to_json(payload, inf_nan_mode="constants").decode()


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, json_serializer=_to_json)
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": 30, "check_same_thread": False}, json_serializer=_to_json
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine
