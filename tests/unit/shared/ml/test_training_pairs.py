"""Which pairs a training job reads from the ledger (real SQLite), and how they become its dataset."""

import io
from datetime import UTC, datetime, timedelta

import datasets
import pytest
from PIL import Image

from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.ml.preference_data import preference_dataset
from shared.ml.training_pairs import pair_records, select_pairs
from tests.integration.pipeline_helpers import png

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _pair(n: int, judges: list[str], minutes: int, margin: float = 1.0) -> ev.Pair:
    return ev.Pair(
        pair_id=f"pair-{n}",
        instruction_id=f"inst-{n:04d}",
        prompt="Describe.",
        image_uris=[],
        chosen=ev.PairSide(response_id=f"r{n}a", model_id="m1", text="good", score=4.0),
        rejected=ev.PairSide(response_id=f"r{n}b", model_id="m2", text="bad", score=4.0 - margin),
        margin=margin,
        strategy="vlfeedback",
        judge_ids=judges,
        split="train",
        created_at=T0 + timedelta(minutes=minutes),
    )


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    yield ledger
    ledger.close()


def test_a_job_reads_the_pairs_that_existed_when_it_was_requested(ledger):
    """Every attempt and every rank of a job sees one dataset, however many pairs came since."""
    ledger.record(_pair(1, ["a"], minutes=0), _pair(2, ["a"], minutes=5))
    requested_at = T0 + timedelta(minutes=10)
    first_attempt = select_pairs(ledger, ev.DatasetSelector(), created_before=requested_at)
    ledger.record(_pair(3, ["a"], minutes=20))
    after_restart = select_pairs(ledger, ev.DatasetSelector(), created_before=requested_at)
    assert [p.pair_id for p in after_restart] == [p.pair_id for p in first_attempt] == ["pair-1", "pair-2"]
    assert len(select_pairs(ledger, ev.DatasetSelector())) == 3


def test_named_judges_select_pairs_made_from_exactly_those_judges(ledger):
    """As ``vlf export trl`` does: naming a and b means their averaged ratings, not each alone."""
    ledger.record(
        _pair(1, ["a"], 0), _pair(2, ["b"], 1), _pair(3, ["a", "b"], 2), _pair(4, ["a"], 3, margin=0.2)
    )

    def ids(**selector) -> list[str]:
        return [p.pair_id for p in select_pairs(ledger, ev.DatasetSelector(**selector))]

    assert ids(judge_ids=["b", "a"]) == ["pair-3"]
    assert ids(judge_ids=["a"]) == ["pair-1", "pair-4"]
    assert ids(judge_ids=["a"], min_margin=0.5) == ["pair-1"]
    assert ids() == ["pair-1", "pair-2", "pair-3", "pair-4"]


def test_each_image_is_read_once_and_stored_as_it_was(ledger, tmp_path):
    """At the paper's scale an instruction's image is shown by up to 6 pairs: one copy in memory,
    and the dataset keeps its encoded bytes (no decoded copy, no re-encoding)."""
    blobs = BlobStore(str(tmp_path / "blobs"))
    red, blue = png("red"), png("blue")
    uris = [blobs.put(red, suffix=".png"), blobs.put(blue, suffix=".png")]
    pairs = [_pair(n, ["a"], n).model_copy(update={"image_uris": [uris[n // 2]]}) for n in range(4)]
    records = pair_records(pairs, blobs)
    assert records[0].images[0] is records[1].images[0] and records[2].images[0] is records[3].images[0]

    dataset = preference_dataset(records, cache_dir=tmp_path / "cache")
    stored = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert [row["images"][0]["bytes"] for row in stored] == [red, red, blue, blue]
    assert dataset[0]["images"][0].size == Image.open(io.BytesIO(red)).size, "decoded when read"
    again = preference_dataset(records, cache_dir=tmp_path / "cache")
    assert again.cache_files == dataset.cache_files, "the same pairs reuse their Arrow file"
