"""Backend failures, classified for the runtime."""

from shared.errors import PermanentError, RetryableError


class TransientBackendError(RetryableError):
    """429, 5xx, timeouts, connection errors: worth retrying later."""


class PermanentBackendError(PermanentError):
    """4xx other than 429 (bad request, unknown model, auth): the backend's message is kept."""


class ContextLengthError(PermanentBackendError):
    """The prompt (with images) is longer than the model's context."""
