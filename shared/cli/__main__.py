"""``python -m shared.cli`` runs the ``vlf`` command line."""

from shared.cli import app

app()
