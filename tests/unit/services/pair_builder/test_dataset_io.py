"""VLFeedback import -> export reproduces the input field for field; TRL's collator accepts our export."""

from __future__ import annotations

import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.pair_builder.dataset_io import (
    PREFERENCE_FEATURES,
    VLFEEDBACK_JUDGE,
    VLFEEDBACK_SCHEMA,
    export_preference_dataset,
    export_vlfeedback,
    import_vlfeedback,
    parse_rating,
)
from services.pair_builder.rules import PairRule, build_pairs
from services.pair_builder.split import split_of
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.ml.training_pairs import select_pairs
from vlf.cli import app


def png(colour: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def judged(rating: str, why: str) -> dict:
    return {"Rating": rating, "Rationale": why}


def completion(model: str, response: str, h: str, e: str, v: str) -> dict:
    return {
        "model": model,
        "response": response,
        "annotations": {
            "Helpfulness": judged(h, f"{model} helpfulness"),
            "Ethical Considerations": judged(e, f"{model} ethics"),
            "Visual Faithfulness": judged(v, f"{model} faithfulness"),
        },
    }


RECORDS = [
    {
        "id": "svit-detail-0001",
        "prompt": "Describe the image in detail.",
        "models": ["gpt4v", "llava-v1.5-13b", "qwen-vl-chat", "fuyu-8b"],
        "img_path": "svit/0001.png",
        "completions": [
            completion("gpt4v", "A red square on white.", "5", "5", "5"),
            completion("llava-v1.5-13b", "A red box.", "4", "5", "4"),
            completion("qwen-vl-chat", "A blue circle.", "2", "5", "1"),
            completion("fuyu-8b", "", "N/A", "5", "N/A"),
        ],
    },
    {
        "id": "m3",  # shorter than an instruction id may be: imported under a hash, exported as "m3"
        "prompt": "Was steht auf dem Schild? «Ünïcödé»",
        "models": ["llava-v1.5-7b", "idefics-9b"],
        "img_path": "shared.png",
        "completions": [
            completion("llava-v1.5-7b", "Es steht „Halt“ darauf.", "3", "4", "3"),
            {
                "model": "idefics-9b",
                "response": "Stop.",
                "annotations": {"Helpfulness": judged("4", "ok"), "Visual Faithfulness": judged("4", "")},
            },
        ],
    },
    {
        "id": "llava-conv-0003",
        "prompt": "How many shapes?",
        "models": ["a", "b", "c", "d"],
        "img_path": "shared.png",
        "completions": [
            completion("a", "Two.", "4", "4", "4"),
            completion("b", "Three.", "3", "3", "3"),
            completion("c", "Two shapes.", "4", "4", "4"),
            completion("d", "I cannot tell.", "1", "5", "2"),
        ],
    },
]
MISSING_IMAGE = {**RECORDS[2], "id": "lrv-missing-0004", "img_path": "nowhere.png"}
ESCAPING_IMAGE = {**RECORDS[2], "id": "lrv-escape-0005", "img_path": "../outside.png"}
BROKEN = {"id": "broken-record-0006", "prompt": "no completions"}


@pytest.fixture
def store(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    yield ledger, BlobStore(str(tmp_path / "blobs"))
    ledger.close()


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "svit").mkdir(parents=True)
    (root / "svit" / "0001.png").write_bytes(png("red"))
    (root / "shared.png").write_bytes(png("blue"))
    (tmp_path / "outside.png").write_bytes(png("green"))
    return root


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def test_jsonl_import_then_export_reproduces_every_record_field_for_field(store, image_root, tmp_path):
    ledger, blobs = store
    source = tmp_path / "vlfeedback.jsonl"
    write_jsonl(source, [*RECORDS, MISSING_IMAGE, ESCAPING_IMAGE, BROKEN])

    report = import_vlfeedback(source, image_root, ledger, blobs, show_progress=False)
    exported = export_vlfeedback(ledger, blobs, tmp_path / "out" / "data.jsonl", tmp_path / "out" / "images")

    records = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert by_id(records) == by_id(RECORDS)
    for record in records:  # key order as released, at every level
        original = by_id(RECORDS)[record["id"]]
        assert list(record) == ["id", "prompt", "models", "img_path", "completions"]
        for ours, theirs in zip(record["completions"], original["completions"], strict=True):
            assert list(ours) == list(theirs)
            assert list(ours["annotations"]) == list(theirs["annotations"])
    assert (tmp_path / "out" / "images" / "svit" / "0001.png").read_bytes() == png("red")
    assert (tmp_path / "out" / "images" / "shared.png").read_bytes() == png("blue")
    assert (report.records_read, report.records_imported) == (6, 3)
    assert (report.missing_images, report.refused_images, report.invalid_records) == (1, 1, 1)
    assert any("lrv-missing-0004" in p for p in report.problems)
    assert (exported.records, exported.images_written) == (3, 2)


def test_parquet_import_then_export_reproduces_the_records(store, image_root, tmp_path):
    ledger, blobs = store
    source = tmp_path / "vlfeedback.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS, schema=VLFEEDBACK_SCHEMA), source)

    import_vlfeedback(source, image_root, ledger, blobs, show_progress=False)
    export_vlfeedback(ledger, blobs, tmp_path / "out.parquet", tmp_path / "images")

    assert pq.read_table(tmp_path / "out.parquet").equals(pq.read_table(source))


def test_import_writes_ledger_facts_with_raw_ratings_and_is_idempotent(store, image_root, tmp_path):
    ledger, blobs = store
    source = tmp_path / "vlfeedback.jsonl"
    write_jsonl(source, RECORDS)

    first = import_vlfeedback(source, image_root, ledger, blobs, show_progress=False)
    second = import_vlfeedback(source, image_root, ledger, blobs, show_progress=False)

    assert first.facts_inserted == 3 + 10 + 3 and second.facts_inserted == 0
    assert (ledger.count(ev.Instruction), ledger.count(ev.Response), ledger.count(ev.Annotation)) == (
        3,
        10,
        3,
    )
    [annotation] = ledger.annotations_for("svit-detail-0001")
    assert annotation.judge_id == VLFEEDBACK_JUDGE
    fuyu = annotation.rated[3].ratings
    assert fuyu[ev.Aspect.HELPFULNESS] == ev.AspectRating(
        rating=None, raw="N/A", rationale="fuyu-8b helpfulness"
    )
    assert fuyu[ev.Aspect.ETHICAL_CONSIDERATIONS].rating == 5
    assert blobs.get(annotation.instruction.image_uris[0]) == png("red")
    assert annotation.instruction.image_uris[0].endswith(".png")


def test_rating_strings_become_numbers_only_when_they_are_ratings():
    assert [parse_rating(r) for r in ["4", " 5 ", "4.5", "N/A", "", "0", "6", "nan", "five"]] == [
        4.0,
        5.0,
        4.5,
        None,
        None,
        None,
        None,
        None,
        None,
    ]


def test_imported_ratings_make_the_papers_pairs(store, image_root, tmp_path):
    ledger, blobs = store
    write_jsonl(tmp_path / "v.jsonl", RECORDS[:1])
    import_vlfeedback(tmp_path / "v.jsonl", image_root, ledger, blobs, show_progress=False)

    pairs = build_pairs(ledger.annotations_for("svit-detail-0001"), PairRule(), "train", (VLFEEDBACK_JUDGE,))

    # gpt4v 5, llava 13/3, qwen 8/3; fuyu has N/A ratings: 3 pairs, 3 skipped
    assert {(p.chosen.model_id, p.rejected.model_id) for p in pairs.pairs} == {
        ("gpt4v", "llava-v1.5-13b"),
        ("gpt4v", "qwen-vl-chat"),
        ("llava-v1.5-13b", "qwen-vl-chat"),
    }
    assert pairs.skipped_bad_ratings == 3


def test_vlf_import_makes_the_pairs_vlf_train_reads(image_root, tmp_path):
    """The released data is trainable as imported: ``vlf import`` also writes the pair builder's
    pairs (its rule and split), once."""
    write_jsonl(tmp_path / "v.jsonl", RECORDS)
    ledger_url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"VLF_LEDGER_URL": ledger_url, "VLF_BLOB_URL": str(tmp_path / "cli-blobs")}
    command = ["import", str(tmp_path / "v.jsonl"), "--images", str(image_root)]
    first = CliRunner().invoke(app, command, env=env)
    assert "new preference pairs" in first.output, first.output
    ledger = Ledger(ledger_url)
    try:
        expected = {
            (p.instruction_id, p.chosen.response_id, p.rejected.response_id)
            for a in ledger.iter_facts(ev.Annotation)
            for p in build_pairs(
                [a], PairRule(), split_of(a.instruction_id, 0.005, 42), (VLFEEDBACK_JUDGE,)
            ).pairs
            if p.split == "train"
        }
        selected = select_pairs(ledger, ev.DatasetSelector(split="train"))
        assert (
            expected
            and {(p.instruction_id, p.chosen.response_id, p.rejected.response_id) for p in selected}
            == expected
        )
        again = CliRunner().invoke(app, command, env=env)
        assert "0 new preference pairs" in again.output, again.output
        assert ledger.count(ev.Pair) == len(expected)
    finally:
        ledger.close()


@pytest.fixture
def pair_dataset(store, image_root, tmp_path):
    ledger, blobs = store
    write_jsonl(tmp_path / "v.jsonl", RECORDS)
    import_vlfeedback(tmp_path / "v.jsonl", image_root, ledger, blobs, show_progress=False)
    for record_id in ("svit-detail-0001", "llava-conv-0003"):
        annotations = ledger.annotations_for(record_id)
        ledger.record(*build_pairs(annotations, PairRule(), "train", (VLFEEDBACK_JUDGE,)).pairs)
    report = export_preference_dataset(ledger, blobs, tmp_path / "trl")
    return report, tmp_path / "trl"


def test_preference_export_is_trl_conversational_format_with_images(pair_dataset):
    report, out = pair_dataset
    on_disk = datasets.load_from_disk(str(out / "dataset"))
    from_parquet = datasets.load_dataset("parquet", data_files=str(out / "train.parquet"), split="train")

    assert (
        report.records == len(on_disk) == len(from_parquet) == 3 + 5
    )  # llava-conv-0003: a = c = 4 tie, b 3, d 8/3
    for dataset in (on_disk, from_parquet):
        row = next(r for r in dataset if r["chosen"][0]["content"][0]["text"] == "A red square on white.")
        assert row["prompt"] == [
            {
                "role": "user",
                "content": [
                    {"type": "image", "text": None},
                    {"type": "text", "text": "Describe the image in detail."},
                ],
            }
        ]
        assert row["rejected"][0]["role"] == "assistant"
        assert row["rejected"][0]["content"][0]["text"] in {"A red box.", "A blue circle."}
        [image] = row["images"]
        assert isinstance(image, Image.Image) and image.size == (64, 48)
        assert image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.slow
def test_trl_vision_collator_accepts_the_exported_rows(pair_dataset):
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from devkit.tinymodels import DEFAULT_CORPUS, qwen2_vl_parts

    _, out = pair_dataset
    _, processor = qwen2_vl_parts(DEFAULT_CORPUS)
    rows = list(datasets.load_from_disk(str(out / "dataset")).select(range(4)))

    batch = DataCollatorForVisionPreference(processor)(rows)

    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert batch["input_ids"].shape[0] == 8  # chosen and rejected of 4 pairs
    assert ((batch["input_ids"] == image_pad).sum(dim=1) > 0).all()
    assert batch["pixel_values"].shape[0] > 0
    assert (batch["completion_mask"].sum(dim=1) > 0).all()


def test_exporting_an_empty_split_writes_it_empty_and_says_so(image_root, tmp_path):
    """A small import holds no held-out instruction (0.5% of a few): the export writes an empty
    split with the same columns instead of a traceback."""
    write_jsonl(tmp_path / "v.jsonl", RECORDS)
    env = {"VLF_LEDGER_URL": f"sqlite:///{tmp_path / 'cli.db'}", "VLF_BLOB_URL": str(tmp_path / "cli-blobs")}
    CliRunner().invoke(app, ["import", str(tmp_path / "v.jsonl"), "--images", str(image_root)], env=env)

    result = CliRunner().invoke(app, ["export", "trl", str(tmp_path / "out"), "--split", "heldout"], env=env)

    assert result.exit_code == 0, result.output
    assert "no pairs of strategy 'vlfeedback' in split 'heldout'" in " ".join(result.output.split())
    empty = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(empty) == 0 and empty.features == PREFERENCE_FEATURES
    assert pq.read_table(tmp_path / "out" / "heldout.parquet").num_rows == 0


def test_exports_carry_a_dataset_card_of_models_judge_prompt_rule_and_counts(image_root, tmp_path):
    """The card (README.md for the Hub) says what made the data: the judge's model and its prompt
    file's sha256 from the registry, the answering models, the pair rule and the counts; the
    VLFeedback export's Hub dataset carries each record's image as an Image feature."""
    import hashlib

    import yaml

    from services.pair_builder.dataset_io import vlfeedback_hub_dataset

    write_jsonl(tmp_path / "v.jsonl", RECORDS)
    prompt = tmp_path / "judge-prompt.txt"
    prompt.write_text("Rate {instruction} {answers}")
    registry = tmp_path / "registry.yaml"
    judge = {"id": "vlfeedback-gpt4v", "model": "gpt-4v", "prompt_template": str(prompt)}
    registry.write_text(yaml.safe_dump({"models": [], "judges": [judge]}))
    env = {
        "VLF_LEDGER_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "VLF_BLOB_URL": str(tmp_path / "cli-blobs"),
        "VLF_REGISTRY_PATH": str(registry),
    }
    CliRunner().invoke(app, ["import", str(tmp_path / "v.jsonl"), "--images", str(image_root)], env=env)

    trl = CliRunner().invoke(app, ["export", "trl", str(tmp_path / "trl")], env=env)
    out = tmp_path / "vlf" / "records.jsonl"
    vlf = CliRunner().invoke(
        app, ["export", "vlfeedback", str(out), "--images", str(tmp_path / "vlf" / "img")], env=env
    )

    assert trl.exit_code == 0 and vlf.exit_code == 0, trl.output + vlf.output
    digest = hashlib.sha256(prompt.read_bytes()).hexdigest()
    pairs_card = (tmp_path / "trl" / "README.md").read_text()
    assert pairs_card.startswith("---\n") and "task_categories" in pairs_card
    assert f"model `gpt-4v`, prompt template `judge-prompt.txt`, sha256 `{digest}`" in pairs_card
    assert "- `gpt4v`:" in pairs_card and "strategy: `vlfeedback`" in pairs_card
    records_card = (tmp_path / "vlf" / "records.README.md").read_text()
    assert "- instructions: 3" in records_card and "- `fuyu-8b`: 1 answers" in records_card
    hub = vlfeedback_hub_dataset(out, tmp_path / "vlf" / "img")
    assert isinstance(hub.features["image"], datasets.Image)
    row = {r["id"]: r for r in hub}["svit-detail-0001"]
    assert row["image"].size == (64, 48) and row["image"].getpixel((0, 0)) == (255, 0, 0)
