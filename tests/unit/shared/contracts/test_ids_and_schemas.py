from shared.contracts import ids
from shared.contracts.schema_export import SCHEMA_DIR, render_schemas


def test_ids_are_deterministic_and_sensitive_to_every_part():
    base = ids.response_id("inst", "model-a", {"temperature": 0.7, "top_p": 1.0}, 0)
    assert base == ids.response_id("inst", "model-a", {"top_p": 1.0, "temperature": 0.7}, 0)
    assert base != ids.response_id("inst", "model-b", {"temperature": 0.7, "top_p": 1.0}, 0)
    assert base != ids.response_id("inst", "model-a", {"temperature": 0.7, "top_p": 1.0}, 1)
    assert len(base) == ids.ID_HEX_CHARS


def test_instruction_id_depends_on_image_and_prompt():
    a = ids.instruction_id(["abc"], "prompt")
    assert a == ids.instruction_id(["abc"], "prompt")
    assert a != ids.instruction_id(["abd"], "prompt")
    assert a != ids.instruction_id(["abc"], "prompt!")


def test_annotation_id_ignores_response_order():
    assert ids.annotation_id("i", "j", "all_in_one", ["r1", "r2"]) == ids.annotation_id(
        "i", "j", "all_in_one", ["r2", "r1"]
    )


def test_committed_json_schemas_match_the_models():
    """Run `python -m shared.contracts.schema_export` when this fails."""
    rendered = render_schemas()
    committed = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.schema.json")}
    assert committed == rendered
