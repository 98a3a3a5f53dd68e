"""Shared CLI pieces: option definitions, the one output helper, the error boundary."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from dna_deploy.display import format_value

# Piped or captured output is not cut at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

SpaceOpt = typer.Option("dna-mbconv", "--space", "-s", help="Preset (dna-mbconv, tiny) or a space file (.yaml/.json/.toml).")
FormatOpt = typer.Option("table", "--format", "-f", help="table (for people) or json (for scripts).")


def render(data: Any, *, fmt: str = "table", title: str | None = None, columns: list[str] | None = None) -> None:
    """Print rows (list of dicts) or a mapping as a rich table, or anything as JSON."""
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    if fmt != "table":
        raise typer.BadParameter(f"--format {fmt!r}: use 'table' or 'json'")
    if isinstance(data, dict):
        table = Table(title=title, show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for k, v in data.items():
            table.add_row(str(k), format_value(v))
    else:
        rows = list(data)
        columns = columns or (list(rows[0]) if rows else [])
        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
        for r in rows:
            table.add_row(*[format_value(r.get(c)) for c in columns])
    console.print(table)
