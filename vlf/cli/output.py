"""Where the CLI's commands print, and the one way they fail on bad input."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def fail(message: str, hint: str) -> None:
    """Print ``message`` (it may quote user data, so as text, never as markup) and exit 2."""
    err.print(f"[bold red]error:[/] {escape(message)}\n[dim]hint: {escape(hint)}[/]")
    raise typer.Exit(2)
