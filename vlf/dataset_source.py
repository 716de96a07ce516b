"""Where ``vlf import`` reads from: a local file, or a dataset laid out as the Hub release.

The released VLFeedback repository (``hf://datasets/MMInstruction/VLFeedback``) holds
``vlfeedback_80k.jsonl`` (``annotated_gpt4_preference_80k.jsonl`` in earlier revisions) and
``merged_images.zip`` (``merged_images/<id>.jpg``). Its loading script does not run under
``datasets`` 4, so the files are read directly: any fsspec URL of such a folder works
(``hf://datasets/OWNER/NAME[@REVISION]``, ``https://...``, ``file://...``, or a local folder), and so
does the URL of one JSONL or Parquet file (Parquet rows may embed their images). Files are copied
into a local cache once (a copy of the same size is reused), and the zip's images are extracted
there, so a re-run reads nothing twice.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shared.contracts.ids import stable_hash

RELEASED_RECORD_FILES = ("vlfeedback_80k.jsonl", "annotated_gpt4_preference_80k.jsonl")
RELEASED_IMAGES_ZIP = "merged_images.zip"
ZIP_IMAGE_FOLDER = "merged_images"
RECORD_SUFFIXES = (".jsonl", ".parquet")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
COPY_CHUNK_BYTES = 8 << 20


class DatasetSourceError(ValueError):
    """The source names no file or release folder that ``vlf import`` can read."""


@dataclass(frozen=True, slots=True)
class LocalCopy:
    records: Path
    image_root: Path | None  # None: the records embed their images (or have none)


def is_remote(source: str) -> bool:
    return "://" in source


def fetch(source: str, cache_root: Path) -> LocalCopy:
    """A local copy of ``source`` (a release folder or one records file) under ``cache_root``."""
    fs, path = fsspec.core.url_to_fs(source)
    path = path.rstrip("/")
    target = cache_root / stable_hash("vlf-import", source)[:16]
    if PurePosixPath(path).suffix in RECORD_SUFFIXES:
        if not fs.isfile(path):
            raise DatasetSourceError(f"{source}: no such file")
        return LocalCopy(_copy(fs, path, target / PurePosixPath(path).name), None)
    name = next((n for n in RELEASED_RECORD_FILES if fs.isfile(f"{path}/{n}")), None)
    if name is None:
        raise DatasetSourceError(
            f"{source}: neither a .jsonl/.parquet file nor a release folder with "
            + " or ".join(RELEASED_RECORD_FILES)
        )
    records = _copy(fs, f"{path}/{name}", target / name)
    if not fs.isfile(f"{path}/{RELEASED_IMAGES_ZIP}"):
        return LocalCopy(records, None)
    archive = _copy(fs, f"{path}/{RELEASED_IMAGES_ZIP}", target / RELEASED_IMAGES_ZIP)
    images = extract_images(archive, target / "images")
    return LocalCopy(records, _image_root(records, images))


def extract_images(archive: Path, into: Path) -> Path:
    """The zip's image files under ``into`` (once: a member already there is not rewritten). Only
    image files are taken, and a member naming a place outside ``into`` is skipped."""
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            destination = (into / member.filename).resolve()
            if member.is_dir() or PurePosixPath(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not destination.is_relative_to(root) or destination.exists():
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(destination.name + ".partial")
            with zipped.open(member) as source, partial.open("wb") as sink:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    sink.write(chunk)
            partial.replace(destination)
    return into


def _image_root(records: Path, images: Path) -> Path:
    """``img_path`` values name files inside the zip's ``merged_images/`` or the folder itself."""
    with records.open("rb") as lines:
        first = next((line for line in lines if line.strip()), b"{}")
    try:
        img_path = str(json.loads(first).get("img_path") or "")
    except (json.JSONDecodeError, AttributeError):
        img_path = ""
    nested = images / ZIP_IMAGE_FOLDER
    if nested.is_dir() and not (images / img_path).is_file() and (nested / img_path).is_file():
        return nested
    return images


def _copy(fs: fsspec.AbstractFileSystem, path: str, local: Path) -> Path:
    """``path`` as a local file: itself on the local disk, else a cached copy."""
    if isinstance(fs, LocalFileSystem):
        return Path(path)
    size = fs.size(path)
    if local.is_file() and size is not None and local.stat().st_size == size:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".partial")
    fs.get_file(path, str(partial))  # streamed: a plain HTTP server need not serve byte ranges
    partial.replace(local)
    return local
