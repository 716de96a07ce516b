"""Image intake: the policy refuses what could read files, reach internal hosts or exhaust memory."""

import base64
import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from shared.blobs.errors import ImageSourceRefused, ImageSourceUnavailable, InvalidImage
from shared.blobs.images import ImagePolicy, load_image_source, validate_image
from shared.errors import PermanentError


def png_bytes(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color=(200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format=image_format)
    return buffer.getvalue()


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb's calling card."""
    data = bytearray(png_bytes(1, 1))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def policy_for(root: Path, **overrides: object) -> ImagePolicy:
    return ImagePolicy(local_roots=(root,), **overrides)


# ---------------------------------------------------------------- validate_image


def test_a_valid_png_is_described() -> None:
    data = png_bytes(8, 6)

    info = validate_image(data, ImagePolicy())

    assert (info.format, info.width, info.height) == ("PNG", 8, 6)
    assert len(info.sha256) == 64


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP", "GIF", "BMP"])
def test_the_default_formats_are_accepted(image_format: str) -> None:
    assert validate_image(image_bytes(image_format), ImagePolicy()).format == image_format


def test_a_format_outside_the_policy_is_refused() -> None:
    with pytest.raises(InvalidImage, match="format TIFF not allowed"):
        validate_image(image_bytes("TIFF"), ImagePolicy())


def test_undecodable_bytes_are_refused_as_a_permanent_error() -> None:
    with pytest.raises(InvalidImage, match="undecodable") as raised:
        validate_image(b"this is not an image at all", ImagePolicy())
    assert isinstance(raised.value, PermanentError)


def test_a_truncated_image_is_refused() -> None:
    data = png_bytes(64, 64)

    with pytest.raises(InvalidImage, match="undecodable"):
        validate_image(data[: len(data) // 2], ImagePolicy())


def test_a_header_declaring_100k_by_100k_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage, match="too many pixels"):
        validate_image(png_declaring_size(100_000, 100_000), ImagePolicy())


def test_a_canvas_over_the_pixel_limit_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"too many pixels: 8x6 > 40"):
        validate_image(png_bytes(8, 6), ImagePolicy(max_pixels=40))


def test_oversize_bytes_are_refused() -> None:
    data = png_bytes()

    with pytest.raises(InvalidImage, match="too large"):
        validate_image(data, ImagePolicy(max_bytes=len(data) - 1))


# ---------------------------------------------------------------- load_image_source: local files


def test_a_path_inside_a_root_is_read(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(png_bytes())

    assert load_image_source(str(tmp_path / "img.png"), policy_for(tmp_path)) == png_bytes()
    assert load_image_source((tmp_path / "img.png").as_uri(), policy_for(tmp_path)) == png_bytes()


def test_a_relative_path_is_resolved_from_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "img.png").write_bytes(png_bytes())
    monkeypatch.chdir(tmp_path)

    assert load_image_source("img.png", ImagePolicy()) == png_bytes()


@pytest.mark.parametrize("source", ["../../etc/passwd", "/etc/passwd", "file:///etc/passwd"])
def test_paths_outside_the_roots_are_refused(tmp_path: Path, source: str) -> None:
    root = tmp_path / "images"
    root.mkdir()

    with pytest.raises(ImageSourceRefused, match="outside the allowed roots"):
        load_image_source(str(root / source) if source.startswith("..") else source, policy_for(root))


def test_a_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    os.symlink(secret, root / "innocent.png")

    with pytest.raises(ImageSourceRefused, match="outside the allowed roots"):
        load_image_source(str(root / "innocent.png"), policy_for(root))


def test_a_file_url_on_another_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageSourceRefused, match="another host"):
        load_image_source("file://fileserver/share/img.png", policy_for(tmp_path))


def test_a_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ImageSourceUnavailable):
        load_image_source(str(tmp_path / "nope.png"), policy_for(tmp_path))


def test_a_directory_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()

    with pytest.raises(ImageSourceRefused, match="not a regular file"):
        load_image_source(str(tmp_path / "folder"), policy_for(tmp_path))


def test_an_oversize_local_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png_bytes())

    with pytest.raises(InvalidImage, match="too large"):
        load_image_source(str(tmp_path / "big.png"), policy_for(tmp_path, max_bytes=10))


# ---------------------------------------------------------------- load_image_source: URLs


@pytest.mark.parametrize(
    "source", ["ftp://example.com/img.png", "gopher://example.com/1", "javascript:alert(1)", "s3://b/img.png"]
)
def test_unknown_schemes_are_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(ImageSourceRefused, match="scheme"):
        load_image_source(source, policy_for(tmp_path))


def test_http_is_refused_by_default(tmp_path: Path) -> None:
    policy = policy_for(tmp_path, allowed_url_hosts={"images.example.org"})

    with pytest.raises(ImageSourceRefused, match="scheme 'http' not allowed"):
        load_image_source("http://images.example.org/a.png", policy)


def test_a_host_not_listed_is_refused(tmp_path: Path) -> None:
    policy = policy_for(tmp_path, allowed_url_hosts={"images.example.org"})

    with pytest.raises(ImageSourceRefused, match="host 'evil.example.com' not allowed"):
        load_image_source("https://evil.example.com/a.png", policy)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.10", "localhost"])
def test_a_listed_host_on_a_private_address_is_refused(tmp_path: Path, host: str) -> None:
    policy = policy_for(tmp_path, allowed_url_hosts={host})

    with pytest.raises(ImageSourceRefused, match="non-public addresses"):
        load_image_source(f"https://{host}/latest/meta-data", policy)


def test_a_base64_data_url_is_decoded(tmp_path: Path) -> None:
    data = png_bytes()
    source = "data:image/png;base64," + base64.b64encode(data).decode()

    assert load_image_source(source, policy_for(tmp_path)) == data


@pytest.mark.parametrize("source", ["data:text/html;base64,PGI+", "data:image/png,raw", "data:image/png"])
def test_non_image_or_non_base64_data_urls_are_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(ImageSourceRefused, match="data URL"):
        load_image_source(source, policy_for(tmp_path))


def test_a_data_url_with_broken_base64_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="base64"):
        load_image_source("data:image/png;base64,@@@notbase64", policy_for(tmp_path))


def test_an_oversize_data_url_is_refused_before_decoding(tmp_path: Path) -> None:
    source = "data:image/png;base64," + base64.b64encode(b"x" * 1000).decode()

    with pytest.raises(InvalidImage, match="too large"):
        load_image_source(source, policy_for(tmp_path, max_bytes=100))
