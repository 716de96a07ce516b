"""The SQLAlchemy ledger of facts and job statuses."""

from shared.ledger.store import Ledger

__all__ = ["Ledger"]
