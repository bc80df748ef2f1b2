"""The ``invfp`` command line (typer + rich). One module per subcommand."""

from invfp.cli.app import app, main

__all__ = ["app", "main"]
