"""``python -m vlf.cli`` runs the ``vlf`` command line."""

from vlf.cli import app

app()
