from services.sampler.handler import build_requests, response_status, sample_seed
from shared.backends.base import GenerationResult
from shared.contracts import events as ev
from shared.registry import ModelEntry

MODEL = ModelEntry(id="m1", backend="openai", model="x", base_url="http://h/v1")


def test_seeds_differ_per_sample_and_work_for_any_instruction_id():
    assert sample_seed(MODEL, "caller-given id, not hex", 0) != sample_seed(
        MODEL, "caller-given id, not hex", 1
    )
    assert sample_seed(MODEL, "abc", 0) == sample_seed(MODEL, "abc", 0)


def test_one_request_per_sample_with_the_prompt_and_images():
    inst = ev.Instruction(instruction_id="inst-00000001", prompt="What is it?", samples_per_model=3)
    requests = build_requests(inst, MODEL, [b"png-bytes"])
    assert len(requests) == 3
    assert {r.params.seed for r in requests} == {sample_seed(MODEL, inst.instruction_id, i) for i in range(3)}
    assert all(r.messages[-1].text == "What is it?" and r.images == [b"png-bytes"] for r in requests)


def test_empty_and_refused_answers_are_recorded_as_such():
    assert response_status(GenerationResult(text="  ", finish_reason="stop")) == "empty"
    assert response_status(GenerationResult(text="no", finish_reason="content_filter")) == "refused"
    assert response_status(GenerationResult(text="A cat.", finish_reason="stop")) == "answered"
