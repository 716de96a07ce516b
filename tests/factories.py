"""Valid example events of every type, for tests."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord

from shared.contracts import events as ev
from shared.contracts.events import Aspect
from shared.contracts.ids import response_id


def instruction(n: int = 1, **kw) -> ev.Instruction:
    return ev.Instruction(instruction_id=f"inst-{n:08d}", prompt=f"What is shown? ({n})", **kw)


def response(
    inst: ev.Instruction, model_id: str = "m1", text: str = "A red square.", index: int = 0
) -> ev.Response:
    return ev.Response(
        response_id=f"{inst.instruction_id}-{model_id}-{index}",
        instruction=inst,
        model_id=model_id,
        sample_index=index,
        sampling={"temperature": 0.0},
        text=text,
        status="answered",
        finish_reason="stop",
    )


def echo_response(inst: ev.Instruction) -> ev.Response:
    """What the recorder service and the runtime benchmark answer: the prompt echoed, with the
    deterministic response id a real sampler would give it."""
    sampling = {"temperature": 0.0}
    return ev.Response(
        response_id=response_id(inst.instruction_id, "echo", sampling, 0),
        instruction=inst,
        model_id="echo",
        sampling=sampling,
        text=inst.prompt,
        status="answered",
        finish_reason="stop",
    )


def ratings(h: int | None, v: int | None, e: int | None) -> dict[Aspect, ev.AspectRating]:
    values = {Aspect.HELPFULNESS: h, Aspect.VISUAL_FAITHFULNESS: v, Aspect.ETHICAL_CONSIDERATIONS: e}
    return {a: ev.AspectRating(rating=r, raw=str(r) if r is not None else "N/A") for a, r in values.items()}


def annotation(inst: ev.Instruction, scores: dict[str, tuple], judge_id: str = "judge") -> ev.Annotation:
    """``scores``: model id -> (helpfulness, faithfulness, ethics)."""
    rated = [
        ev.RatedResponse(
            response_id=f"{inst.instruction_id}-{model}-0",
            model_id=model,
            text=f"answer of {model}",
            shown_position=i,
            ratings=ratings(*triple),
        )
        for i, (model, triple) in enumerate(scores.items())
    ]
    return ev.Annotation(
        annotation_id=f"{inst.instruction_id}-{judge_id}",
        instruction=inst,
        judge_id=judge_id,
        mode="all_in_one",
        rated=rated,
    )


def one_of_each(n: int = 1) -> list[ev.Event]:
    inst = instruction(n)
    resp = response(inst)
    ann = annotation(inst, {"m1": (5, 4, 5), "m2": (2, 2, 5)})
    pair = ev.Pair(
        pair_id=f"pair-{n}",
        instruction_id=inst.instruction_id,
        prompt=inst.prompt,
        image_uris=[],
        chosen=ev.PairSide(response_id="r1", model_id="m1", text="good", score=4.67),
        rejected=ev.PairSide(response_id="r2", model_id="m2", text="bad", score=3.0),
        margin=1.67,
        strategy="vlfeedback",
        judge_ids=["judge"],
        split="train",
    )
    return [
        inst,
        resp,
        ann,
        pair,
        ev.TrainRequest(job_id=f"job-{n}", base_model="tiny"),
        ev.TrainProgress(job_id=f"job-p{n}", status="running", step=3, total_steps=10, loss=0.69),
        ev.Checkpoint(
            checkpoint_id=f"ckpt-{n}",
            job_id=f"job-{n}",
            base_model="tiny",
            artifact_uri="file:///x",
            kind="adapter",
        ),
        ev.EvalRequest(
            eval_id=f"eval-{n}", model=ev.ModelRef(name="base", base_model="tiny"), benchmarks=["mme"]
        ),
        ev.EvalResult(
            result_id=f"res-{n}",
            eval_id=f"eval-{n}",
            model=ev.ModelRef(name="base", base_model="tiny"),
            benchmark="mme",
            status="completed",
            metrics={"perception": 1000.0},
        ),
    ]


def consumer_record(
    topic: str,
    offset: int,
    headers: list,
    key: bytes | None = b"k",
    value: bytes | None = b"v",
    partition: int = 0,
) -> ConsumerRecord:
    """A record as kafka-python's consumer hands it to the runtime (fields it does not read: zero)."""
    return ConsumerRecord(
        topic=topic, partition=partition, leader_epoch=-1, offset=offset, timestamp=0, timestamp_type=0,
        key=key, value=value, headers=headers, checksum=None, serialized_key_size=-1,
        serialized_value_size=-1, serialized_header_size=-1,
    )  # fmt: skip
