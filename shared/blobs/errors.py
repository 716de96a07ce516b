"""Errors of the blob store and of image intake, classified by what the runtime should do next.

A missing, corrupt or refused image will never succeed on retry, so almost all are permanent
(the message goes to the DLQ with the reason); only a remote fetch that timed out or met a 5xx
is worth retrying.
"""

from shared.errors import PermanentError, RetryableError


class InvalidBlobUri(PermanentError):
    """The string is not a blob URI of the form ``sha256:<64 hex>[.suffix]``."""


class BlobNotFound(PermanentError):
    """No blob is stored under this URI."""


class BlobCorrupt(PermanentError):
    """The stored bytes no longer hash to the URI they are stored under."""


class InvalidImage(PermanentError):
    """The bytes are not an image we accept: undecodable, too large, too many pixels, wrong format."""


class ImageSourceRefused(PermanentError):
    """The image source is not allowed: scheme, host, private address or a path outside the roots."""


class ImageSourceUnavailable(PermanentError):
    """The source is allowed but holds no image: missing file, HTTP 4xx."""


class ImageFetchFailed(RetryableError):
    """A remote fetch failed in a way that may pass later: timeout, connection error, HTTP 5xx."""
