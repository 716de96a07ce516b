"""Deterministic ids: a redelivered message yields the same ids, so every write is an upsert."""

from __future__ import annotations

import hashlib
import json

ID_HEX_CHARS = 32  # 128 bits: collision-free at any realistic scale, short enough for logs


def stable_hash(*parts: object) -> str:
    """Hash of JSON-serialised parts; dicts are key-sorted so equal values hash equally."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_HEX_CHARS]


def instruction_id(image_sha256s: list[str], prompt: str) -> str:
    return stable_hash("instruction", image_sha256s, prompt)


def response_id(instruction_id: str, model_id: str, sampling: dict, sample_index: int) -> str:
    return stable_hash("response", instruction_id, model_id, sampling, sample_index)


def annotation_id(instruction_id: str, judge_id: str, mode: str, response_ids: list[str]) -> str:
    return stable_hash("annotation", instruction_id, judge_id, mode, sorted(response_ids))


def pair_id(instruction_id: str, chosen_response_id: str, rejected_response_id: str, strategy: str) -> str:
    return stable_hash("pair", instruction_id, chosen_response_id, rejected_response_id, strategy)


def checkpoint_id(job_id: str, artifact_uri: str) -> str:
    return stable_hash("checkpoint", job_id, artifact_uri)


def eval_result_id(eval_id: str, benchmark: str) -> str:
    return stable_hash("eval_result", eval_id, benchmark)
