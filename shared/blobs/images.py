"""Image intake: where an image may come from, and what counts as an image we accept.

Image sources come from users (``vlf submit``, imported datasets), so loading one must not become a
way to read arbitrary files or reach internal services (SSRF), and decoding one must not exhaust
memory (decompression bombs). ``load_image_source`` enforces where; ``validate_image`` enforces what.
"""

import base64
import binascii
import hashlib
import io
import ipaddress
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from PIL import Image, ImageSequence, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from shared.blobs.errors import ImageFetchFailed, ImageSourceRefused, ImageSourceUnavailable, InvalidImage

# Errors Pillow raises on malformed input, depending on the codec.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
)


class ImagePolicy(BaseModel):
    """Limits on image bytes and on where they may be loaded from.

    Defaults: 20 MiB, 40 megapixels a frame, 100 frames and 100 megapixels over all frames,
    PNG/JPEG/WEBP/GIF/BMP; remote fetch over https only and to no host until hosts are listed; no
    private or loopback addresses (nor IPv6 forms embedding one); local files only under the current
    working directory (at policy creation).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # What an image may be
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest accepted image file.")
    max_pixels: int = Field(default=40_000_000, gt=0, description="Largest width*height, checked first.")
    max_frames: int = Field(default=100, gt=0, description="Most frames of an animated image.")
    max_total_pixels: int = Field(
        default=100_000_000, gt=0, description="Largest width*height*frames: what decoding every frame costs."
    )
    allowed_formats: frozenset[str] = Field(
        default=frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"}), description="Pillow format names."
    )
    # Where it may come from
    allowed_url_schemes: frozenset[str] = Field(
        default=frozenset({"https"}), description="Remote schemes (http, https) that may be fetched."
    )
    allowed_url_hosts: frozenset[str] = Field(
        default=frozenset(), description="Exact host names or IP literals that may be fetched; empty = none."
    )
    allow_private_addresses: bool = Field(
        default=False, description="Allow hosts resolving to loopback, private or link-local addresses."
    )
    local_roots: tuple[Path, ...] = Field(
        default_factory=lambda: (Path.cwd(),), description="Folders local image paths must resolve inside."
    )
    fetch_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of each remote fetch step.")


class ImageInfo(BaseModel):
    """What validation learned about an accepted image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    width: int
    height: int
    sha256: str


# ---------------------------------------------------------------- validation


def validate_image(data: bytes, policy: ImagePolicy) -> ImageInfo:
    """Accept ``data`` only if it is a whole image within the policy; raise ``InvalidImage`` saying why.

    Size, frame count and format come from the header before any pixel is decoded, so a small file
    declaring a huge canvas, or thousands of frames each within the size limit, is refused without
    decoding it.
    """
    if len(data) > policy.max_bytes:
        raise InvalidImage(f"image too large: {len(data)} bytes > {policy.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as header:
            image_format, (width, height) = header.format, header.size
            frames = getattr(header, "n_frames", 1)  # GIF counts by skipping frames, without decoding
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"too many pixels: {error}") from error
    except _DECODE_ERRORS as error:
        raise InvalidImage(f"undecodable image: {error}") from error
    if image_format not in policy.allowed_formats:
        allowed = sorted(policy.allowed_formats)
        raise InvalidImage(f"image format {image_format} not allowed (allowed: {allowed})")
    if width * height > policy.max_pixels:
        raise InvalidImage(f"too many pixels: {width}x{height} > {policy.max_pixels}")
    if frames > policy.max_frames:
        raise InvalidImage(f"too many frames: {frames} > {policy.max_frames} (an animated image)")
    if width * height * frames > policy.max_total_pixels:
        raise InvalidImage(
            f"too many pixels over all frames: {frames} frames of {width}x{height}"
            f" > {policy.max_total_pixels}"
        )
    _decode_fully(data)
    return ImageInfo(format=image_format, width=width, height=height, sha256=hashlib.sha256(data).hexdigest())


def _decode_fully(data: bytes) -> None:
    """Checksums (verify) and every pixel of every frame (load): a truncated or damaged file fails
    here, not in a model."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            for frame in ImageSequence.Iterator(image):
                frame.load()
    except _DECODE_ERRORS as error:
        raise InvalidImage(f"undecodable image: {error}") from error


def load_valid_image(source: str, policy: ImagePolicy) -> tuple[bytes, ImageInfo]:
    """Bytes of ``source`` and what validation learned, or the error saying why it was refused.

    The one intake every path that accepts a user's image goes through (``vlf submit``, ``vlf
    import``), so none of them can skip a check the others make.
    """
    data = load_image_source(source, policy)
    return data, validate_image(data, policy)


# ---------------------------------------------------------------- sources


def load_image_source(source: str, policy: ImagePolicy) -> bytes:
    """Bytes of an image given as a local path, ``file://``, ``http(s)://`` or ``data:image/...;base64,`` URL.

    Raises ``ImageSourceRefused`` for anything the policy does not allow, ``ImageSourceUnavailable``
    when an allowed source holds nothing, ``ImageFetchFailed`` for a remote failure worth retrying and
    ``InvalidImage`` when the bytes exceed ``max_bytes``. The bytes are not decoded: call
    ``validate_image`` on them.
    """
    scheme = urlsplit(source).scheme.lower()
    if scheme == "data":
        return _read_data_url(source, policy)
    if scheme == "file":
        return _read_local_file(_file_url_path(source), policy)
    if scheme in {"http", "https"}:
        return _fetch_remote(source, policy)
    if scheme == "":
        return _read_local_file(source, policy)
    raise ImageSourceRefused(f"scheme {scheme!r} not allowed for images: {source[:100]!r}")


def _read_data_url(source: str, policy: ImagePolicy) -> bytes:
    header, separator, payload = source.partition(",")
    media_type, *params = header.removeprefix("data:").split(";")
    if not separator or not media_type.lower().startswith("image/") or "base64" not in params:
        raise ImageSourceRefused("only base64 data URLs of an image/* type are accepted")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise InvalidImage(f"image too large: data URL holds more than {policy.max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise InvalidImage(f"data URL is not valid base64: {error}") from error


def _file_url_path(source: str) -> str:
    parts = urlsplit(source)
    if parts.netloc not in {"", "localhost"}:
        raise ImageSourceRefused(f"file URL on another host: {source[:100]!r}")
    return unquote(parts.path)


def _read_local_file(path_text: str, policy: ImagePolicy) -> bytes:
    """Read a file only if its real path (symlinks and '..' resolved) lies inside a local root."""
    try:
        resolved = Path(path_text).resolve()
    except (OSError, ValueError) as error:  # NUL bytes, symlink loops
        raise ImageSourceRefused(f"unusable image path {path_text[:100]!r}: {error}") from error
    roots = [root.resolve() for root in policy.local_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = [str(root) for root in roots]
        raise ImageSourceRefused(f"path {path_text!r} resolves outside the allowed roots {allowed}")
    if not resolved.exists():
        raise ImageSourceUnavailable(f"no image file at {path_text!r}")
    if not resolved.is_file():
        raise ImageSourceRefused(f"{path_text!r} is not a regular file")
    size = resolved.stat().st_size
    if size > policy.max_bytes:
        raise InvalidImage(f"image too large: {path_text!r} has {size} bytes > {policy.max_bytes}")
    return resolved.read_bytes()


def _fetch_remote(source: str, policy: ImagePolicy) -> bytes:
    parts = urlsplit(source)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in policy.allowed_url_schemes:
        allowed = sorted(policy.allowed_url_schemes)
        raise ImageSourceRefused(f"scheme {scheme!r} not allowed (allowed: {allowed})")
    if host not in policy.allowed_url_hosts:
        raise ImageSourceRefused(f"host {host!r} not allowed (allowed: {sorted(policy.allowed_url_hosts)})")
    address = _resolve_public_address(host, parts.port or (443 if scheme == "https" else 80), policy)
    return _download(_pin_address(source, address), host, policy)


def _resolve_public_address(host: str, port: int, policy: ImagePolicy) -> str:
    """One address of ``host``, after checking that none of its addresses is internal."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ImageFetchFailed(f"cannot resolve image host {host!r}: {error}") from error
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not policy.allow_private_addresses:
        internal = [str(address) for address in addresses if not _is_public(address)]
        if internal:
            raise ImageSourceRefused(f"host {host!r} resolves to non-public addresses {internal}")
    return str(addresses[0])


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global, and so is any IPv4 address it carries: a NAT64 gateway, a 6to4 relay or the host's own
    dual stack delivers ``64:ff9b::a9fe:a9fe``, ``2002:a00:1::``, ``::7f00:1`` or ``::ffff:a00:1``
    to the IPv4 address inside (here 169.254.169.254, 10.0.0.1, 127.0.0.1, 10.0.0.1)."""
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and (address in _NAT64 or address in _IPV4_COMPATIBLE):
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded is None or embedded.is_global


def _pin_address(source: str, address: str) -> str:
    """Connect to the address we checked, not to whatever a second DNS lookup returns (rebinding)."""
    parts = urlsplit(source)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _download(url: str, host: str, policy: ImagePolicy) -> bytes:
    """GET without following redirects (they could point anywhere), stopping at ``max_bytes``."""
    port = urlsplit(url).port
    host_header = f"{host}:{port}" if port else host
    try:
        with (
            httpx.Client(timeout=policy.fetch_timeout_s, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "GET", url, headers={"Host": host_header}, extensions={"sni_hostname": host}
            ) as response,
        ):
            _check_status(response, host)
            return _read_capped(response, policy.max_bytes)
    except httpx.TransportError as error:
        raise ImageFetchFailed(f"fetching image from {host!r} failed: {error!r}") from error


def _check_status(response: httpx.Response, host: str) -> None:
    status = response.status_code
    if response.is_redirect:
        raise ImageSourceRefused(f"image URL on {host!r} redirects (HTTP {status}), which is not followed")
    if status >= 500 or status == 429:
        raise ImageFetchFailed(f"image host {host!r} answered HTTP {status}")
    if status != 200:
        raise ImageSourceUnavailable(f"image host {host!r} answered HTTP {status}")


def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidImage(f"image too large: server declares {declared} bytes > {max_bytes}")
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise InvalidImage(f"image too large: more than {max_bytes} bytes")
    return bytes(body)
