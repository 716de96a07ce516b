"""The content-addressed blob store: what events rely on when they carry a blob URI."""

import hashlib
from pathlib import Path

import pytest

from shared.blobs.errors import BlobCorrupt, BlobNotFound, InvalidBlobUri
from shared.blobs.store import BlobStore, blob_uri, blob_url, parse_blob_uri
from shared.errors import PermanentError

IMAGE_BYTES = b"\x89PNG pretend image bytes"
IMAGE_HEX = hashlib.sha256(IMAGE_BYTES).hexdigest()


def stored_file(root: Path, uri: str) -> Path:
    hex_digest, suffix = parse_blob_uri(uri)
    return root / "sha256" / hex_digest[:2] / f"{hex_digest}{suffix}"


def test_put_then_get_returns_the_same_bytes_under_a_content_uri(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))

    uri = store.put(IMAGE_BYTES, suffix=".png")

    assert uri == f"sha256:{IMAGE_HEX}.png"
    assert store.get(uri) == IMAGE_BYTES
    assert store.exists(uri)
    assert stored_file(tmp_path, uri).read_bytes() == IMAGE_BYTES


def test_the_uri_does_not_depend_on_where_the_store_lives(tmp_path: Path) -> None:
    first = BlobStore(str(tmp_path / "a")).put(IMAGE_BYTES)
    second = BlobStore("memory://vlf-test-blobs").put(IMAGE_BYTES)

    assert first == second == blob_uri(IMAGE_BYTES)


def test_put_is_idempotent_and_leaves_one_file(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))

    uris = {store.put(IMAGE_BYTES, suffix=".png") for _ in range(3)}

    assert len(uris) == 1
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == [f"{IMAGE_HEX}.png"]


def test_put_repairs_a_truncated_copy(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    uri = store.put(IMAGE_BYTES)
    stored_file(tmp_path, uri).write_bytes(IMAGE_BYTES[:5])

    store.put(IMAGE_BYTES)

    assert store.get(uri) == IMAGE_BYTES


def test_a_tampered_blob_is_reported_corrupt(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    uri = store.put(IMAGE_BYTES)
    stored_file(tmp_path, uri).write_bytes(b"X" * len(IMAGE_BYTES))

    with pytest.raises(BlobCorrupt, match="corrupt"):
        store.get(uri)


def test_a_missing_blob_is_a_permanent_not_found(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    uri = blob_uri(b"never stored")

    assert not store.exists(uri)
    with pytest.raises(BlobNotFound) as raised:
        store.get(uri)
    assert isinstance(raised.value, PermanentError)


@pytest.mark.parametrize(
    "uri",
    [
        "blob://sha256/" + IMAGE_HEX,
        "sha256:" + IMAGE_HEX[:-1],
        "sha256:" + IMAGE_HEX.upper(),
        f"sha256:{IMAGE_HEX}/../../etc/passwd",
        f"sha256:{IMAGE_HEX}.PNG",
        "",
    ],
)
def test_malformed_uris_are_refused(tmp_path: Path, uri: str) -> None:
    store = BlobStore(str(tmp_path))

    with pytest.raises(InvalidBlobUri):
        store.get(uri)


def test_a_root_served_over_http_gives_each_blob_a_url_at_its_place_in_the_store(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    uri = store.put(b"image bytes", suffix=".png")
    hex_digest = uri.removeprefix("sha256:").removesuffix(".png")

    url = blob_url(uri, "https://cdn.example.com/vlf-blobs/")

    assert url == f"https://cdn.example.com/vlf-blobs/sha256/{hex_digest[:2]}/{hex_digest}.png"
    assert (tmp_path / url.removeprefix("https://cdn.example.com/vlf-blobs/")).read_bytes() == b"image bytes"


def test_require_refuses_a_missing_blob_without_reading_any(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    store.require(store.put(b"here"))
    with pytest.raises(BlobNotFound, match="no blob sha256:"):
        store.require(blob_uri(b"never stored"))


def test_a_suffix_must_look_like_an_extension() -> None:
    with pytest.raises(ValueError, match="suffix"):
        blob_uri(IMAGE_BYTES, suffix="/../x")


def test_an_fsspec_url_store_round_trips() -> None:
    store = BlobStore("memory://vlf-test-roundtrip")

    uri = store.put(IMAGE_BYTES, suffix=".jpg")

    assert store.get(uri) == IMAGE_BYTES
    assert BlobStore("memory://vlf-test-roundtrip").exists(uri)


def test_no_partial_files_are_left_behind(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))

    store.put(IMAGE_BYTES)
    store.put(b"another blob")

    assert not [path for path in tmp_path.rglob("*") if path.name.endswith(".partial")]
