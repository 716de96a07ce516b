"""`vlf import` from where users keep datasets: a folder laid out as the Hub release served over
real HTTP (fsspec's HTTP filesystem, as for hf://), the older file name, and a Parquet file whose
rows embed their images."""

from __future__ import annotations

import functools
import io
import json
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest
from PIL import Image
from typer.testing import CliRunner

from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from vlf.cli import app


def jpeg(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, format="JPEG")
    return out.getvalue()


def record(record_id: str, img_path: str) -> dict:
    def completion(model: str, rating: str) -> dict:
        judged = {"Rating": rating, "Rationale": f"{model} {rating}"}
        return {
            "model": model,
            "response": f"{model} says {rating}",
            "annotations": {
                "Helpfulness": judged,
                "Ethical Considerations": judged,
                "Visual Faithfulness": judged,
            },
        }

    return {
        "id": record_id,
        "prompt": f"What colour is {record_id}?",
        "models": ["m1", "m2"],
        "img_path": img_path,
        "completions": [completion("m1", "5"), completion("m2", "2")],
    }


COLOURS = {"svit-0000001": "red", "llava-0000002": "green", "lrv-00000003": "blue"}


def release_folder(root: Path, records_name: str, prefixed: bool) -> Path:
    """The Hub repository's files: the records JSONL and merged_images.zip (merged_images/<id>.jpg)."""
    root.mkdir(parents=True)
    lines = [record(i, f"merged_images/{i}.jpg" if prefixed else f"{i}.jpg") for i in COLOURS]
    (root / records_name).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with zipfile.ZipFile(root / "merged_images.zip", "w") as zipped:
        for record_id, colour in COLOURS.items():
            zipped.writestr(f"merged_images/{record_id}.jpg", jpeg(colour))
        zipped.writestr("../escape.jpg", jpeg("black"))  # never written outside the folder
    return root


@pytest.fixture
def http_root(tmp_path):
    served = tmp_path / "hub"
    served.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _env(tmp_path: Path) -> dict[str, str]:
    return {"VLF_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "VLF_BLOB_URL": str(tmp_path / "blobs")}


def _images_by_source_id(tmp_path: Path) -> dict[str, bytes]:
    ledger, blobs = Ledger(_env(tmp_path)["VLF_LEDGER_URL"]), BlobStore(str(tmp_path / "blobs"))
    try:
        return {
            i.metadata["vlfeedback_id"]: blobs.get(i.image_uris[0]) for i in ledger.iter_facts(ev.Instruction)
        }
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("records_name", "prefixed"),
    [("vlfeedback_80k.jsonl", False), ("annotated_gpt4_preference_80k.jsonl", True)],
)
def test_a_release_folder_over_http_imports_with_its_zipped_images(
    http_root, tmp_path, records_name, prefixed
):
    served, base_url = http_root
    release_folder(served / "VLFeedback", records_name, prefixed)
    command = ["import", f"{base_url}/VLFeedback", "--download-dir", str(tmp_path / "downloads")]

    first = CliRunner().invoke(app, command, env=_env(tmp_path))
    again = CliRunner().invoke(app, command, env=_env(tmp_path))

    assert first.exit_code == 0, first.output
    assert "imported 3 of 3 records" in first.output and "0 new facts" in again.output
    images = _images_by_source_id(tmp_path)
    assert set(images) == set(COLOURS)
    for record_id, colour in COLOURS.items():
        assert images[record_id] == jpeg(colour)
    assert not list(tmp_path.rglob("escape.jpg")), "a zip member naming ../ is skipped"


def test_a_folder_without_the_release_files_is_refused(http_root, tmp_path):
    served, base_url = http_root
    (served / "empty").mkdir()

    result = CliRunner().invoke(app, ["import", f"{base_url}/empty"], env=_env(tmp_path))

    assert result.exit_code == 2 and "vlfeedback_80k.jsonl" in result.output


def test_parquet_rows_with_embedded_images_import_without_an_images_folder(tmp_path):
    rows = [
        record(i, f"{i}.jpg") | {"image": {"bytes": jpeg(c), "path": f"{i}.jpg"}} for i, c in COLOURS.items()
    ]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "models": [datasets.Value("string")],
            "img_path": datasets.Value("string"),
            "completions": [
                {
                    "model": datasets.Value("string"),
                    "response": datasets.Value("string"),
                    "annotations": {
                        aspect: {"Rating": datasets.Value("string"), "Rationale": datasets.Value("string")}
                        for aspect in ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
                    },
                }
            ],
            "image": datasets.Image(),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "train.parquet"))

    result = CliRunner().invoke(app, ["import", str(tmp_path / "train.parquet")], env=_env(tmp_path))

    assert result.exit_code == 0, result.output
    assert "imported 3 of 3 records" in result.output
    assert _images_by_source_id(tmp_path) == {i: jpeg(c) for i, c in COLOURS.items()}


def test_rlaif_v_rows_become_pairs_that_vlf_trains_and_exports(tmp_path):
    """RLAIF-V's layout: each row a pair, image embedded; two rows share an image and question."""
    rows = [
        {
            "image": {"bytes": jpeg(colour), "path": f"{n}.jpg"},
            "question": f"What colour is shape {n % 2}?",
            "chosen": f"It is {colour}.",
            "rejected": f"It is not {colour}, it is purple {n}.",
            "ds_name": "RLAIF-V",
            "origin_dataset": "fixture",
            "origin_split": "train",
            "idx": n,
            "image_path": f"images/{n}.jpg",
        }
        for n, colour in enumerate(["red", "green", "red"])
    ]
    rows[2] |= {"question": rows[0]["question"], "image": rows[0]["image"]}  # a second pair for one prompt
    features = datasets.Features(
        {key: datasets.Value("int64" if key == "idx" else "string") for key in rows[0] if key != "image"}
        | {"image": datasets.Image()}
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "rlaif.parquet"))
    env = _env(tmp_path)

    imported = CliRunner().invoke(app, ["import", str(tmp_path / "rlaif.parquet")], env=env)
    again = CliRunner().invoke(app, ["import", str(tmp_path / "rlaif.parquet")], env=env)
    exported = CliRunner().invoke(
        app, ["export", "trl", str(tmp_path / "trl"), "--strategy", "rlaif-v"], env=env
    )

    assert imported.exit_code == 0, imported.output
    assert "3 RLAIF-V rows recorded as pairs of strategy rlaif-v" in imported.output
    assert "(0 new facts)" in again.output
    ledger = Ledger(env["VLF_LEDGER_URL"])
    try:
        pairs = list(ledger.iter_facts(ev.Pair, strategy="rlaif-v"))
        assert ledger.count(ev.Instruction) == 2 and len(pairs) == 3
        assert {(p.chosen.text, p.rejected.text) for p in pairs} == {
            (r["chosen"], r["rejected"]) for r in rows
        }
        assert all(p.judge_ids == ["rlaif-v"] and p.margin == 1.0 for p in pairs)
    finally:
        ledger.close()
    assert exported.exit_code == 0, exported.output
    train = datasets.load_from_disk(str(tmp_path / "trl" / "dataset"))
    assert len(train) == sum(p.split == "train" for p in pairs)
    assert {row["chosen"][0]["content"][0]["text"] for row in train} <= {r["chosen"] for r in rows}
