"""The typer application and the error-handling entry point.

Subcommand modules must not import torch at module level: ``invfp --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
from typing import Any

import typer

from invfp.errors import InvfpError

app = typer.Typer(
    name="invfp",
    help="Turn structural fingerprints back into atoms, and generate new structures "
    "with a target property.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    state["debug"] = debug


# (module, attribute, command name); a sub-app when the attribute is a typer.Typer.
COMMANDS: list[tuple[str, str, str]] = [
    ("invfp.cli.plugins_cmd", "plugins", "plugins"),
    ("invfp.cli.version_cmd", "version", "version"),
    ("invfp.cli.featurize_cmd", "featurize", "featurize"),
    ("invfp.cli.data_cmd", "data", "data"),
    ("invfp.cli.train_cmd", "train", "train"),
    ("invfp.cli.generate_cmd", "generate", "generate"),
    ("invfp.cli.score_cmd", "score", "score"),
    ("invfp.cli.report_cmd", "report", "report"),
    ("invfp.cli.run_cmd", "run", "run"),
    ("invfp.cli.reconstruct_cmd", "reconstruct", "reconstruct"),
]


def _install_commands() -> None:
    for module_name, attr, command in COMMANDS:
        obj = getattr(importlib.import_module(module_name), attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=command)
        else:
            app.command(command)(obj)


_install_commands()


def error(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit with ``code`` (for CLI argument checks)."""
    raise typer.Exit(_print_error(message, code))


INTERRUPTED = "interrupted; rerun the same command to resume where possible"
TERMINATED = "terminated (SIGTERM); rerun the same command to resume where possible"
_signals = {"term": False}


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a batch scheduler's time limit) unwinds like Ctrl-C.

    Python's default for SIGTERM ends the process at once: no ``finally`` runs, so
    temporary directories stay behind and worker pools are not stopped in order. Raising
    KeyboardInterrupt takes the Ctrl-C path instead (committed results are kept, workers
    stopped, exit code 143 = 128 + SIGTERM). A second SIGTERM while that cleanup runs is
    ignored, so that it finishes (``kill -9`` still ends the process at once).
    """
    if _signals["term"]:
        return
    _signals["term"] = True
    raise KeyboardInterrupt


def _redeliver_swallowed_interrupt(unraisable: Any) -> None:
    """``sys.unraisablehook``: a Ctrl-C or SIGTERM that Python swallowed is delivered again.

    A signal handler runs wherever the interpreter is, also inside a weakref callback or a
    ``__del__`` (importlib's module locks use one), where Python prints "Exception ignored
    in ..." and drops the KeyboardInterrupt: the command then went on as if never
    interrupted, and a killed run could even end with exit code 0. Instead the signal is
    raised again a moment later from a helper thread (raised here, its handler would run
    inside this hook and be dropped again); the handler then runs in the main thread,
    outside the callback (were it inside another, this hook would send it once more).
    """
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    if _signals["term"]:
        _signals["term"] = False  # the handler sets it again and raises
        signum = signal.SIGTERM
    elif signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signum = signal.SIGINT
    else:
        return
    timer = threading.Timer(0.01, signal.raise_signal, (signum,))
    timer.daemon = True  # never holds up the end of the process
    timer.start()


def _interrupted() -> int:
    """The one-line message and exit code for an interrupted command (Ctrl-C or SIGTERM)."""
    if _signals["term"]:
        return _print_error(TERMINATED, 128 + signal.SIGTERM)
    return _print_error(INTERRUPTED, 130)


def key_values(items: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """Repeatable ``KEY=VALUE`` options as a dict.

    Values are JSON where they parse (``r_cut=6.0``, ``'g2_params=[[1, 0]]'``), else
    strings (``cutoff=polynomial``).

    Raises:
        ConfigError: an item without ``=`` or without a key, naming ``flag`` and ``example``.
    """
    from invfp.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} is not key=value (e.g. {flag} {example})")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _print_error(message: str, code: int) -> int:
    from rich.console import Console
    from rich.markup import escape

    # escape: messages hold literal brackets (`pip install 'invfp[soap]'`) that rich would eat as markup
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    return code


def main() -> None:
    """Console-script entry point: run the app, turning errors into one line + exit code."""
    debug = "--debug" in sys.argv
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _redeliver_swallowed_interrupt
    try:
        # standalone_mode=False: typer hands usage errors to us (one line) instead of a boxed message
        code = app(prog_name="invfp", standalone_mode=False)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer has already printed the help
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        sys.exit(_print_error(f"{exc.format_message()}{hint}", exc.exit_code))
    except typer.Abort:
        sys.exit(_interrupted() if _signals["term"] else _print_error("aborted", 1))
    except InvfpError as exc:
        if debug:
            raise
        sys.exit(_print_error(str(exc), exc.exit_code))
    except KeyboardInterrupt:
        sys.exit(_interrupted())
    except OSError as exc:  # disk full, permissions, a file where a directory should be ...
        if debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        sys.exit(_print_error(
            f"cannot read or write{where}: {exc.strerror or exc}; check that the path exists, that its parents "
            "are directories you may write to and that the disk has space", 74,
        ))
    except Exception as exc:  # noqa: BLE001 - no tracebacks for users unless --debug
        if debug:
            raise
        sys.exit(
            _print_error(
                f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 70
            )
        )
    if code == 130:  # typer (standalone_mode=False) turns Ctrl-C into this exit code itself
        sys.exit(_interrupted())
    sys.exit(code if isinstance(code, int) else 0)
