import json

import pytest

from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import MAX_MESSAGE_BYTES, decode, encode
from shared.errors import ContractError


def _instruction(**kw) -> ev.Instruction:
    return ev.Instruction(instruction_id="inst-00000001", prompt="What colour is the square?", **kw)


def test_round_trip_keeps_every_field():
    original = _instruction(image_uris=["sha256:" + "a" * 64], models=["m1", "m2"], reference="red")
    assert decode(topics.INSTRUCTIONS, encode(original)) == original


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (
            json.dumps({"schema_version": 99, "instruction_id": "inst-00000001", "prompt": "x"}).encode(),
            "unknown schema_version 99",
        ),
        (json.dumps({"schema_version": 1, "prompt": "x"}).encode(), "instruction_id: Field required"),
        (
            json.dumps({"schema_version": 1, "instruction_id": "inst-00000001", "prompt": 5}).encode(),
            "prompt: Input should be a valid string",
        ),
        (
            json.dumps(
                {"schema_version": 1, "instruction_id": "inst-00000001", "prompt": "x", "extra": 1}
            ).encode(),
            "extra: Extra inputs are not permitted",
        ),
        (None, "tombstone"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "exceeds"),
    ],
)
def test_bad_payloads_raise_contract_error_with_reason(payload, reason):
    with pytest.raises(ContractError, match=reason):
        decode(topics.INSTRUCTIONS, payload)


def test_events_are_frozen():
    inst = _instruction()
    with pytest.raises(ValueError):
        inst.prompt = "changed"


def test_rating_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="1..5"):
        ev.AspectRating(rating=7, raw="7")


def test_topic_keys_follow_the_registry():
    inst = _instruction()
    assert topics.INSTRUCTIONS.key(inst) == "inst-00000001"
    req = ev.TrainRequest(job_id="job-1", base_model="tiny")
    assert topics.TRAIN_REQUESTS.key(req) == "job-1"
    assert topics.TRAIN_REQUESTS.dlq == "vlf.train.requests.v1.dlq"


def test_unknown_topic_name_fails_loudly():
    with pytest.raises(KeyError, match="unknown topic"):
        topics.topic("vlf.nope.v1")
