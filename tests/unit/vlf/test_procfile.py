from shared.registry import Registry
from vlf.procfile import procfile


def test_one_process_per_model_and_judge_with_distinct_ports():
    registry = Registry.model_validate(
        {
            "models": [
                {"id": "a", "backend": "openai", "model": "m", "base_url": "http://x/v1"},
                {"id": "b", "backend": "transformers", "model": "/models/b"},
            ],
            "judges": [{"id": "verify", "kind": "verifiable"}],
        }
    )
    lines = procfile(registry, first_port=9000).splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == ["sampler-a", "sampler-b", "annotator-verify", "pair-builder", "trainer", "evaluator"]
    assert "VLF_SAMPLER_MODEL_ID=b" in lines[1] and lines[1].endswith("-m services.sampler")
    ports = [line.split("VLF_HTTP_PORT=")[1].split()[0] for line in lines]
    assert ports == [str(p) for p in range(9000, 9006)]
