"""Error classes the Kafka runtime acts on.

The runtime decides what happens next from the class alone:
- ``RetryableError``: transient (backend 5xx, timeout); retried with backoff, then dead-lettered.
- ``PermanentError``: this message can never succeed (missing image, 4xx); dead-lettered at once.
- ``ContractError``: the payload breaks its topic's contract (bad JSON, unknown schema version).
Anything else is a bug: the process crashes loudly and the message is redelivered after restart.
"""


class VlfError(Exception):
    """Base of every error the pipeline raises on purpose."""


class RetryableError(VlfError):
    """Transient failure: try the same message again later."""


class PermanentError(VlfError):
    """The message cannot succeed however often it is retried."""


class ContractError(PermanentError):
    """The payload does not match its topic's contract."""
