"""Export the JSON Schema of every topic's event, so producers in any language can submit.

Run ``python -m shared.contracts.schema_export`` after changing an event model; a test checks
that the committed files match the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.contracts.topics import ALL_TOPICS

SCHEMA_DIR = Path(__file__).parent / "schemas"


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, one file per topic."""
    files = {}
    for spec in ALL_TOPICS:
        schema = spec.model.model_json_schema(mode="validation")
        schema["$id"] = f"urn:vlf:topic:{spec.name}"
        schema["x-kafka-topic"] = spec.name
        schema["x-kafka-dlq"] = spec.dlq
        files[f"{spec.name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in render_schemas().items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(ALL_TOPICS)} schemas to {SCHEMA_DIR}")


if __name__ == "__main__":
    main()
