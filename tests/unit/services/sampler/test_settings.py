from services.sampler.settings import with_lanes_for
from shared.registry import ModelEntry
from shared.settings import CommonSettings


def model(concurrency: int) -> ModelEntry:
    return ModelEntry(id="m1", backend="openai", model="x", base_url="http://h/v1", concurrency=concurrency)


def test_lanes_are_twice_the_models_concurrency_with_a_buffer_twice_the_lanes():
    settings = with_lanes_for(CommonSettings(max_in_flight=8, max_buffered=64), model(64))
    assert (settings.max_in_flight, settings.max_buffered) == (128, 256)


def test_larger_configured_lanes_and_buffer_win():
    settings = with_lanes_for(CommonSettings(max_in_flight=300, max_buffered=1000), model(64))
    assert (settings.max_in_flight, settings.max_buffered) == (300, 1000)
