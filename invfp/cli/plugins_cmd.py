"""``invfp plugins``: list every component by kind, with its plugin and version."""

from __future__ import annotations

import json

import typer


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    kind: str = typer.Option(None, "--kind", help="Only this kind: representation, optimizer, model, validator."),
) -> None:
    """List every registered component by kind, with the plugin and version that provides it."""
    from invfp.plugins import get_registry
    from invfp.registry import KINDS

    if kind is not None and kind not in KINDS:
        from invfp.cli.app import error

        error(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    entries = [e.as_dict() for e in get_registry().entries(kind)]
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="invfp components")
    for col in ("kind", "name", "plugin", "version"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for e in entries:
        name = e["name"] + (f" ({', '.join(e['aliases'])})" if e["aliases"] else "")
        table.add_row(e["kind"], name, escape(e["plugin"]), e["version"], escape(e["description"]))
    Console().print(table)
