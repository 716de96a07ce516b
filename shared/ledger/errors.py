"""Ledger errors."""

from shared.errors import PermanentError, RetryableError


class LedgerUnavailable(RetryableError):
    """The database could not be reached or was locked; worth retrying."""


class FactConflict(PermanentError):
    """A fact id was reused for different content (ids are hashes of content: this is a bug upstream)."""
