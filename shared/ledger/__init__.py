"""The SQLAlchemy ledger of facts and job statuses."""

from shared.ledger.store import JudgeSpend, Ledger

__all__ = ["JudgeSpend", "Ledger"]
