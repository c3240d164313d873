"""What every subcommand shares: one-line errors with exit code 2, and the rich console."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console

from lwm_core.errors import LWMError

console = Console()
err_console = Console(stderr=True)

EXIT_USAGE = 2


def fail(message: str) -> None:
    """Print one clear error line and exit with code 2."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def handle_errors(fn):
    """Turn user-fixable errors into one line and exit code 2 instead of a traceback.

    Set LWM_DEBUG=1 to see the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (LWMError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            if os.environ.get("LWM_DEBUG"):
                raise
            msg = str(exc) if isinstance(exc, LWMError) else f"{exc.strerror or exc}: {exc.filename}"
            fail(msg)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


def not_yet(name: str, issue: str) -> None:
    """For subcommands that a later issue fills in: say so in one line, exit 2."""
    err_console.print(f"lwm {name}: not implemented yet ({issue}).", highlight=False)
    raise typer.Exit(EXIT_USAGE)
