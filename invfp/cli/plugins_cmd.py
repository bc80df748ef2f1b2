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

    # One table per kind, long names folding onto a second line: readable in 80 columns
    # (a pipe) instead of every cell cut to "…". Built-ins show as such (--json: the
    # plugin's registered name, e.g. invfp.builtins.optimizers).
    console = Console()
    for k in KINDS:
        rows = [e for e in entries if e["kind"] == k]
        if not rows:
            continue
        table = Table(title=f"{k}s", title_justify="left")
        table.add_column("name", overflow="fold")
        table.add_column("plugin", overflow="fold")
        table.add_column("version", no_wrap=True)
        table.add_column("description", min_width=24)
        for e in rows:
            name = e["name"] + (f" ({', '.join(e['aliases'])})" if e["aliases"] else "")
            plugin = "invfp (built-in)" if e["plugin"].startswith("invfp.builtins.") else e["plugin"]
            table.add_row(name, escape(plugin), e["version"], escape(e["description"]))
        console.print(table)
