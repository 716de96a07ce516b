"""Remote image fetch against a real HTTP server on loopback (explicitly allowed by the policy)."""

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from shared.blobs.errors import ImageFetchFailed, ImageSourceRefused, ImageSourceUnavailable, InvalidImage
from shared.blobs.images import ImagePolicy, load_image_source, validate_image


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 9), color=(10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE = png_bytes()


class ImageHandler(BaseHTTPRequestHandler):
    """Serves one image, a redirect, a 404, a 503 and an endless body without a length."""

    def do_GET(self) -> None:
        if self.path == "/img.png":
            self._reply(200, IMAGE)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
        elif self.path == "/unavailable":
            self._reply(503, b"busy")
        elif self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"x" * 65536)
            except ConnectionError:  # the client hangs up at its byte cap, as it should
                return
        else:
            self._reply(404, b"no such image")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Keep pytest output clean."""


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


LOOPBACK_ALLOWED = ImagePolicy(
    allowed_url_schemes={"http"}, allowed_url_hosts={"127.0.0.1"}, allow_private_addresses=True
)


def test_an_allowed_url_is_fetched_and_validates(server_url: str) -> None:
    data = load_image_source(f"{server_url}/img.png", LOOPBACK_ALLOWED)

    assert data == IMAGE
    assert validate_image(data, LOOPBACK_ALLOWED).width == 16


def test_loopback_is_refused_unless_private_addresses_are_allowed(server_url: str) -> None:
    policy = ImagePolicy(allowed_url_schemes={"http"}, allowed_url_hosts={"127.0.0.1"})

    with pytest.raises(ImageSourceRefused, match="non-public"):
        load_image_source(f"{server_url}/img.png", policy)


def test_redirects_are_not_followed(server_url: str) -> None:
    with pytest.raises(ImageSourceRefused, match="redirect"):
        load_image_source(f"{server_url}/redirect", LOOPBACK_ALLOWED)


def test_a_404_is_permanent_and_a_503_is_retryable(server_url: str) -> None:
    with pytest.raises(ImageSourceUnavailable, match="404"):
        load_image_source(f"{server_url}/missing.png", LOOPBACK_ALLOWED)
    with pytest.raises(ImageFetchFailed, match="503"):
        load_image_source(f"{server_url}/unavailable", LOOPBACK_ALLOWED)


def test_a_body_over_the_byte_cap_is_cut_off(server_url: str) -> None:
    policy = LOOPBACK_ALLOWED.model_copy(update={"max_bytes": 100_000})

    with pytest.raises(InvalidImage, match="too large"):
        load_image_source(f"{server_url}/endless", policy)
    with pytest.raises(InvalidImage, match="server declares"):
        load_image_source(f"{server_url}/img.png", policy.model_copy(update={"max_bytes": 10}))


def test_a_closed_port_is_a_retryable_failure() -> None:
    with pytest.raises(ImageFetchFailed):
        load_image_source("http://127.0.0.1:9/img.png", LOOPBACK_ALLOWED)
