import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text

from shared.contracts import events as ev
from shared.ledger import JudgeSpend, Ledger
from shared.ledger.store import MIGRATIONS_DIR
from shared.ledger.tables import Base
from shared.registry import CallCost


def _instruction(n: int = 1) -> ev.Instruction:
    return ev.Instruction(instruction_id=f"inst-{n:08d}", prompt=f"prompt {n}")


def _response(inst: ev.Instruction, model: str) -> ev.Response:
    return ev.Response(
        response_id=f"{inst.instruction_id}-{model}",
        instruction=inst,
        model_id=model,
        sampling={"temperature": 0.0},
        text="an answer",
        status="answered",
        finish_reason="stop",
    )


def test_migrations_match_the_table_models(ledger):
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_twice_is_harmless(ledger):
    ledger.migrate()
    ledger.ping()


def test_record_is_insert_or_ignore(ledger):
    inst = _instruction()
    assert ledger.record(inst) == 1
    assert ledger.record(inst) == 0
    assert ledger.instruction(inst.instruction_id) == inst
    assert ledger.count(ev.Instruction) == 1


def test_facts_come_back_exactly_as_recorded_whatever_their_text(ledger):
    """Payloads are written by pydantic-core's JSON serializer, not ``json.dumps``: non-ASCII text,
    quotes, control characters and the metadata map must come back unchanged."""
    inst = ev.Instruction(
        instruction_id="inst-unicode",
        prompt="Qu'est-ce que c'est ? 猫 🐈 \"quoted\" back\\slash\ttab\nnew line \u2028",
        models=["a", "b"],
        metadata={"source": "用户", "empty": ""},
    )
    ledger.record(inst, _response(inst, "a"))
    assert ledger.instruction(inst.instruction_id) == inst
    assert ledger.responses_for(inst.instruction_id)[0].instruction == inst


def test_responses_are_found_by_instruction(ledger):
    inst = _instruction()
    ledger.record(_response(inst, "a"), _response(inst, "b"), _response(_instruction(2), "a"))
    found = ledger.responses_for(inst.instruction_id)
    assert [r.model_id for r in found] == ["a", "b"]
    assert ledger.count(ev.Response, model_id="a") == 2


def test_concurrent_writers_never_duplicate(ledger):
    inst = _instruction()

    def write() -> None:
        for _ in range(20):
            ledger.record(inst, _response(inst, "a"))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.count(ev.Instruction) == 1
    assert ledger.count(ev.Response) == 1


def test_jobs_are_created_once_and_updated(ledger):
    assert ledger.create_job("job-1", "train", {"base_model": "m"})
    assert not ledger.create_job("job-1", "train", {"base_model": "other"})
    ledger.update_job("job-1", status="running", progress={"step": 3}, attempts=1)
    job = ledger.job("job-1")
    assert (job.status, job.progress, job.attempts, job.request) == (
        "running",
        {"step": 3},
        1,
        {"base_model": "m"},
    )
    assert [j.id for j in ledger.jobs(kind="train", status="running")] == ["job-1"]


def test_model_tokens_sum_each_models_answers(ledger):
    first, second = _instruction(1), _instruction(2)
    answers = [
        _response(first, "m1").model_copy(update={"prompt_tokens": 100, "completion_tokens": 7}),
        _response(second, "m1").model_copy(update={"prompt_tokens": 50, "completion_tokens": 3}),
        _response(first, "m2").model_copy(update={"prompt_tokens": 9, "completion_tokens": 0}),
    ]
    ledger.record(first, second, *answers)
    assert ledger.model_tokens() == {"m1": (150, 10), "m2": (9, 0)}


def test_judge_replies_and_predictions_are_kept(ledger):
    # The annotator's longest purpose: pass, mode and every aspect (VARCHAR(64) refused it on PostgreSQL).
    purpose = "pass2:all_in_one:" + "+".join(aspect.value for aspect in ev.Aspect)
    call = Ledger.judge_call_id("inst-1", "gpt", purpose, ["r1", "r2"])
    assert ledger.judge_reply(call) is None
    ledger.save_judge_reply(
        call,
        instruction_id="inst-1",
        judge_id="gpt",
        purpose=purpose,
        raw_reply="Rating: 4",
        prompt_tokens=100,
        cached_prompt_tokens=60,
        completion_tokens=20,
        cost=CallCost(input_usd=0.004, cached_input_usd=0.0015, output_usd=0.006),
    )
    assert ledger.judge_reply(call).raw_reply == "Rating: 4"
    assert ledger.judge_reply(call).purpose == purpose
    assert ledger.judge_reply(call).cached_prompt_tokens == 60
    assert ledger.judge_spend()["gpt"].model_dump() == pytest.approx(
        JudgeSpend(
            calls=1,
            prompt_tokens=100,
            cached_prompt_tokens=60,
            completion_tokens=20,
            total_usd=0.0115,
            input_usd=0.004,
            cached_input_usd=0.0015,
            output_usd=0.006,
        ).model_dump()
    )
    ledger.save_prediction("base", "mme", "color/1.png#0", "Yes")
    assert ledger.prediction("base", "mme", "color/1.png#0") == "Yes"
    assert ledger.prediction("tuned", "mme", "color/1.png#0") is None


def test_many_threads_writing_and_reading_at_once_each_see_their_own_facts(ledger):
    """The ledger batches concurrent calls (one transaction for many lanes): every caller must still
    get its own answer, see its own write once it returns, and count only what it inserted."""
    inserted: dict[int, int] = {}
    seen: dict[int, list[str]] = {}

    def lane(i: int) -> None:
        inst = _instruction(i)
        assert ledger.responses_for(inst.instruction_id) == []
        inserted[i] = ledger.record(inst, _response(inst, "a"), _response(inst, "b"))
        seen[i] = [r.response_id for r in ledger.responses_for(inst.instruction_id)]

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inserted == {i: 3 for i in range(64)}
    assert seen == {i: [f"inst-{i:08d}-a", f"inst-{i:08d}-b"] for i in range(64)}
    assert ledger.count(ev.Response) == 128


def test_a_fact_written_by_two_concurrent_calls_counts_once(ledger):
    shared = _instruction(1)
    counts: list[int] = []
    barrier = threading.Barrier(16)

    def write(i: int) -> None:
        barrier.wait()
        counts.append(ledger.record(shared, _response(shared, f"m{i}")))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 1 + 16  # the instruction once, each caller's own response once
    assert ledger.count(ev.Instruction) == 1


def test_judge_calls_kept_before_the_cost_split_keep_their_cost_after_the_upgrade(ledger_url):
    """Migration 0003 adds cached tokens and the cost parts: a reply paid for before it still counts
    in the judge's total, and is neither priced again nor given parts it never had."""
    led = Ledger(ledger_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with led.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(
            text(
                "INSERT INTO judge_calls (id, instruction_id, judge_id, purpose, raw_reply, prompt_tokens,"
                " completion_tokens, cost_usd, created_at)"
                " VALUES ('old', 'inst-1', 'gpt', 'pass1', 'Rating: 4', 100, 20, 0.01, '2026-01-01')"
            )
        )
    led.migrate()
    spend = led.judge_spend()["gpt"]
    assert (spend.calls, spend.prompt_tokens, spend.cached_prompt_tokens) == (1, 100, 0)
    assert spend.total_usd == pytest.approx(0.01)
    assert spend.input_usd == spend.cached_input_usd == spend.output_usd == 0
    led.close()


def test_batch_requests_wait_assemble_send_and_finish_in_order(ledger):
    from datetime import UTC, datetime, timedelta

    insts = [_instruction(n) for n in (1, 2, 3)]
    ledger.record(*insts, *(_response(i, m) for i in insts for m in ("a", "b")))
    for n, inst in enumerate(insts):
        body = {"model": "judge", "messages": [{"role": "user", "content": f"rate {n}"}]}
        ledger.queue_batch_request(
            f"call-{n}", judge_id="gpt", instruction_id=inst.instruction_id, purpose="pass1", body=body
        )
    ledger.queue_batch_request(
        "call-0", judge_id="gpt", instruction_id="other", purpose="x", body={}
    )  # kept as is
    later = datetime.now(UTC) + timedelta(seconds=1)

    def unrated() -> list[str]:
        return [i for i, _ in ledger.unrated_instructions("gpt", later)]

    assert unrated() == [], "instructions waiting for a batch are not the gather sweep's"
    assert ledger.assemble_batch("gpt", "early", 5, datetime.now(UTC) - timedelta(hours=1)) == 0, (
        "not due yet"
    )
    assert ledger.assemble_batch("gpt", "k1", 2, later) == 2  # oldest first, at most the limit
    assert ledger.assemble_batch("gpt", "k2", 2, later) == 1
    assert ledger.assemble_batch("gpt", "k3", 2, later) == 0
    assert [call for call, _ in ledger.batch_lines("k1")] == ["call-0", "call-1"]
    assert ledger.batch_lines("k1")[0][1]["messages"][0]["content"] == "rate 0"
    assert ledger.batch_request("call-0").instruction_id == insts[0].instruction_id

    ledger.set_batch_file("k1", "file-1")
    ledger.set_batch_submitted("k1", "batch-1")
    assert ledger.batch_lines("k1") == [], "bodies are dropped once the provider holds them"
    assert [(b.id, b.file_id, b.batch_id, b.requests) for b in ledger.open_batches("gpt")] == [
        ("k1", "file-1", "batch-1", 2),
        ("k2", None, None, 1),
    ]
    cost = CallCost(input_usd=0.002, cached_input_usd=0.0, output_usd=0.001)
    for call, inst in (("call-0", insts[0]), ("call-1", insts[1])):
        ledger.save_judge_reply(
            call,
            instruction_id=inst.instruction_id,
            judge_id="gpt",
            purpose="pass1",
            raw_reply="Rating: 3",
            prompt_tokens=10,
            cached_prompt_tokens=0,
            completion_tokens=2,
            cost=cost,
            batch_id="batch-1" if call == "call-0" else None,
        )
    served = ledger.finish_batch("k1", {"call-1": "batch_expired: too late"})
    assert served == sorted(i.instruction_id for i in insts[:2])
    assert (
        ledger.batch_request("call-1").state == "failed"
        and "too late" in ledger.batch_request("call-1").error
    )
    assert ledger.batch_request_counts("gpt") == {"done": 1, "failed": 1, "batched": 1}
    assert [b.id for b in ledger.open_batches("gpt")] == ["k2"]
    assert unrated() == [insts[0].instruction_id, insts[1].instruction_id], "the third still waits"
    spend = ledger.judge_spend()["gpt"]
    assert spend.batch_usd == pytest.approx(0.003) and spend.total_usd == pytest.approx(0.006)
