"""Turn user records (JSONL lines or a folder of images) into instruction events.

Each record is checked on its own: a bad line is refused with its reason and the rest go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.blobs.images import ImagePolicy, load_valid_image
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts.ids import instruction_id
from shared.errors import PermanentError, VlfError
from shared.ledger import Ledger
from shared.registry import Registry
from shared.settings import CommonSettings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


class SubmitRecord(BaseModel):
    """One line of a submission file."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    image: str | None = Field(None, description="Local path (relative to the file), file:// or https URL.")
    images: list[str] = Field(default_factory=list)
    id: str | None = None
    models: list[str] = Field(default_factory=list)
    samples_per_model: int = Field(1, ge=1, le=16)
    reference: str | None = None
    source: str = ""

    @field_validator("id")
    @classmethod
    def _id_length(cls, value: str | None) -> str | None:
        if value is not None and not 8 <= len(value) <= 128:
            raise ValueError("id must be 8 to 128 characters")
        return value

    def image_sources(self) -> list[str]:
        return ([self.image] if self.image else []) + self.images


class Refused(BaseModel):
    where: str
    reason: str


def read_jsonl(path: Path) -> Iterator[tuple[str, SubmitRecord | Refused]]:
    """(line label, record or the reason it was refused) for each non-empty line."""
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                yield where, SubmitRecord.model_validate(json.loads(line))
            except json.JSONDecodeError as exc:
                yield where, Refused(where=where, reason=f"invalid JSON: {exc}")
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                yield where, Refused(where=where, reason=problems)


def folder_records(folder: Path, prompt: str, source: str = "") -> Iterator[tuple[str, SubmitRecord]]:
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        yield image.name, SubmitRecord(prompt=prompt, image=str(image), source=source)


def build_instruction(
    record: SubmitRecord, *, base_dir: Path, policy: ImagePolicy, blobs: BlobStore, registry: Registry | None
) -> ev.Instruction:
    """Load, check and store the images, then fix the instruction's id and assigned models.

    Raises ``PermanentError`` subclasses whose message is the reason to show the user.
    """
    uris, digests = [], []
    for source in record.image_sources():
        is_url = "://" in source or source.startswith("data:")
        # Not resolved here: the loader resolves, and refuses a path it cannot (a NUL byte) with a reason.
        data, info = load_valid_image(source if is_url else str(base_dir / source), policy)
        uris.append(blobs.put(data, suffix="." + info.format.lower()))
        digests.append(info.sha256)
    inst_id = record.id or instruction_id(digests, record.prompt)
    models = record.models
    if registry is not None:
        unknown = [m for m in models if m not in {e.id for e in registry.models}]
        if unknown:
            raise PermanentError(f"models not in the registry: {unknown}")
        models = models or registry.assign(inst_id)
    return ev.Instruction(
        instruction_id=inst_id,
        prompt=record.prompt,
        image_uris=uris,
        models=sorted(models),
        samples_per_model=record.samples_per_model,
        source=record.source,
        reference=record.reference,
    )


class SubmitOutcome(BaseModel):
    published: list[str]
    refused: list[Refused]


def submit_records(
    records: list[tuple[str, SubmitRecord | Refused]],
    *,
    base_dir: Path,
    settings: CommonSettings,
    registry: Registry | None,
    on_record: Callable[[], None] = lambda: None,
) -> SubmitOutcome:
    """Store images, record and publish each instruction; refuse a bad record with its reason."""
    from shared.runtime.admin import EventPublisher

    policy = ImagePolicy(local_roots=(base_dir.resolve(), Path.cwd()))
    blobs = BlobStore(settings.blob_url)
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    outcome = SubmitOutcome(published=[], refused=[])
    with EventPublisher(settings) as publisher:
        for where, record in records:
            on_record()
            if isinstance(record, Refused):
                outcome.refused.append(record)
                continue
            try:
                instruction = build_instruction(
                    record, base_dir=base_dir, policy=policy, blobs=blobs, registry=registry
                )
            except VlfError as exc:
                outcome.refused.append(Refused(where=where, reason=str(exc)))
                continue
            ledger.record(instruction)
            publisher.publish([instruction])
            outcome.published.append(instruction.instruction_id)
    ledger.close()
    return outcome
