"""Content-addressed blob store: the "claim check" that keeps images out of Kafka messages.

URI form: ``sha256:<64 lowercase hex>[<suffix>]``, e.g. ``sha256:9f86...0a08.png``. The URI names the
content, not the place, so events stay valid when the store moves (local dir -> s3:// bucket).
The optional suffix (``.png``) only helps humans and tools that look at the files; the hash covers
the bytes alone. A blob lives at ``<root>/sha256/<first 2 hex>/<hex><suffix>``, so a root served over
HTTP gives every blob a URL (``blob_url``) that a model server can fetch itself.

All I/O goes through fsspec, so ``root_url`` may be a local folder or any fsspec URL (s3://, gs://,
memory://) whose filesystem package is installed.
"""

import hashlib
import posixpath
import re
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shared.blobs.errors import BlobCorrupt, BlobNotFound, InvalidBlobUri

URI_PREFIX = "sha256:"
_URI_PATTERN = re.compile(r"sha256:(?P<hex>[0-9a-f]{64})(?P<suffix>(\.[a-z0-9]{1,16})?)")
_SUFFIX_PATTERN = re.compile(r"(\.[a-z0-9]{1,16})?")


def blob_uri(data: bytes, *, suffix: str = "") -> str:
    """The URI ``put`` returns for these bytes, computed without storing them."""
    if not _SUFFIX_PATTERN.fullmatch(suffix):
        raise ValueError(f"blob suffix must be empty or like '.png' (lowercase, <= 16 chars), got {suffix!r}")
    return f"{URI_PREFIX}{hashlib.sha256(data).hexdigest()}{suffix}"


def parse_blob_uri(uri: str) -> tuple[str, str]:
    """Split a blob URI into (sha256 hex, suffix); raise ``InvalidBlobUri`` for anything else."""
    match = _URI_PATTERN.fullmatch(uri)
    if match is None:
        raise InvalidBlobUri(f"not a blob URI (expected 'sha256:<64 hex>[.ext]'): {uri[:100]!r}")
    return match["hex"], match["suffix"]


def blob_key(uri: str) -> str:
    """Where a blob lives under the store's root: ``sha256/<first 2 hex>/<hex><suffix>``."""
    hex_digest, suffix = parse_blob_uri(uri)
    return f"sha256/{hex_digest[:2]}/{hex_digest}{suffix}"


def blob_url(uri: str, base_url: str) -> str:
    """The blob's address where the store's root is served over HTTP(S) at ``base_url`` (a bucket's
    public or CDN address, a static file server)."""
    return f"{base_url.rstrip('/')}/{blob_key(uri)}"


class BlobStore:
    """Stores bytes under their sha256 and returns them only if they still hash to it."""

    def __init__(self, root_url: str) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(root_url)
        self._root = self._root.rstrip("/")
        self._is_local = isinstance(self._fs, LocalFileSystem)

    def put(self, data: bytes, *, suffix: str = "") -> str:
        """Store ``data`` (idempotent: same bytes, same URI, one copy) and return its URI."""
        uri = blob_uri(data, suffix=suffix)
        path = self._path(uri)
        if self._fs.exists(path) and self._fs.size(path) == len(data):
            return uri
        self._write_whole(path, data)
        return uri

    def get(self, uri: str) -> bytes:
        """The bytes stored under ``uri``; ``BlobNotFound`` or ``BlobCorrupt`` when they cannot be trusted."""
        expected_hex, _ = parse_blob_uri(uri)
        try:
            data = self._fs.cat_file(self._path(uri))
        except FileNotFoundError as error:
            raise self._not_found(uri) from error
        actual_hex = hashlib.sha256(data).hexdigest()
        if actual_hex != expected_hex:
            raise BlobCorrupt(f"blob {uri} is corrupt: its bytes hash to sha256:{actual_hex}")
        return data

    def exists(self, uri: str) -> bool:
        return self._fs.exists(self._path(uri))

    def require(self, uri: str) -> None:
        """``BlobNotFound`` unless a blob is stored under ``uri`` (without reading it)."""
        if not self.exists(uri):
            raise self._not_found(uri)

    def _not_found(self, uri: str) -> BlobNotFound:
        return BlobNotFound(f"no blob {uri} in {self._fs.unstrip_protocol(self._root)}")

    def _path(self, uri: str) -> str:
        return f"{self._root}/{blob_key(uri)}"

    def _write_whole(self, path: str, data: bytes) -> None:
        """Readers must never see half a blob: an object PUT is atomic, a local file needs a rename."""
        if not self._is_local:
            self._fs.pipe_file(path, data)
            return
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        self._fs.pipe_file(partial, data)
        self._fs.mv(partial, path)
