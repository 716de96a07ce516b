import pytest

from shared.contracts.topics import INSTRUCTIONS
from shared.runtime.event_loop import LoopThread
from shared.runtime.kafka_runtime import ServiceDefinition


def plain(event):  # noqa: ANN001, ANN201
    return []


async def coroutine(event):  # noqa: ANN001, ANN201
    return []


def test_handlers_must_match_the_lanes_they_run_on():
    """A coroutine handler without a loop would never be awaited, and a plain one on the loop would
    block it: both are refused at start-up."""
    loop = LoopThread("unused")
    ServiceDefinition(name="s", group_id="g", routes={INSTRUCTIONS.name: plain})
    ServiceDefinition(name="s", group_id="g", routes={INSTRUCTIONS.name: coroutine}, loop=loop)
    with pytest.raises(TypeError, match="coroutine functions"):
        ServiceDefinition(name="s", group_id="g", routes={INSTRUCTIONS.name: plain}, loop=loop)
    with pytest.raises(TypeError, match="plain functions"):
        ServiceDefinition(name="s", group_id="g", routes={INSTRUCTIONS.name: coroutine})
    assert not loop.started
