"""What every subcommand shares: one-line errors with exit code 2, the rich console, and the options
that change a model's config on purpose (--rope-theta, --max-sequence-length)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from lwm_core.errors import LWMError, from_runtime_error

console = Console()
err_console = Console(stderr=True)

EXIT_USAGE = 2

# A checkpoint's stored config is never overridden by --config (a disagreement is refused); these two
# options are the one way to change its architecture, on purpose. Use them as parameter annotations:
#     def cmd(..., rope_theta: RopeThetaOption = None, max_sequence_length: MaxSequenceLengthOption = None)
# and pass `config_changes(rope_theta, max_sequence_length)` as `changes` to `checkpoint_config`.
RopeThetaOption = Annotated[float | None, typer.Option(
    "--rope-theta", metavar="FLOAT",
    help="Change the model's RoPE base on purpose (e.g. for extend-context) instead of keeping the one "
         "the checkpoint or --config has. Changes what the model computes.")]
MaxSequenceLengthOption = Annotated[int | None, typer.Option(
    "--max-sequence-length", metavar="INT",
    help="Change the model's maximum sequence length on purpose (e.g. for extend-context) instead of "
         "keeping the one the checkpoint or --config has.")]


def config_changes(rope_theta: float | None, max_sequence_length: int | None) -> dict[str, Any]:
    """The `changes` for `lwm_core.checkpoint.checkpoint_config` from the two options above."""
    changes: dict[str, Any] = {}
    if rope_theta is not None:
        changes["rope_theta"] = float(rope_theta)
    if max_sequence_length is not None:
        changes["max_sequence_length"] = int(max_sequence_length)
    return changes


def changes_flags(changes: dict[str, Any]) -> str:
    """'--rope-theta/--max-sequence-length' for the keys of `changes`, for messages."""
    return "/".join("--" + name.replace("_", "-") for name in changes)


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
        except RuntimeError as exc:  # jax.errors.JaxRuntimeError: a check inside jit (overflow, bad id)
            error = from_runtime_error(exc)
            if error is None or os.environ.get("LWM_DEBUG"):
                raise
            fail(str(error))

    return wrapper


def parse_vqgan_config(text: str | None):
    """--vqgan-config: a preset name (lwm-tiny), a JSON file, or JSON text; None passes through."""
    from pathlib import Path

    from lwm_core.vqgan import VQGANConfig

    if text is None:
        return None
    path = Path(text).expanduser()
    try:
        if text.lstrip().startswith("{"):
            return VQGANConfig.from_json(text)
        if path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise LWMError(f"--vqgan-config {path}: no such file")
            return VQGANConfig.from_json(path.read_text())
    except (ValueError, TypeError) as exc:  # bad JSON or field values
        raise LWMError(f"--vqgan-config {text!r} is not a VQGANConfig JSON or preset ({exc})") from None
    return VQGANConfig.from_name(text)


def default_model(checkpoint: str | None, config: str | None, tokenizer: str | None, vqgan: str | None
                  ) -> tuple[str, str | None, str | None, str | None]:
    """(checkpoint, config, tokenizer, vqgan): as given, or with no --checkpoint, lwm-tiny's files
    (the model shipped in the package) wherever the caller gave none."""
    if checkpoint is not None:
        return checkpoint, config, tokenizer, vqgan
    from lwm_core.tiny import tiny_files

    files = tiny_files()
    err_console.print("[dim]no --checkpoint: using lwm-tiny, the shapes-world model in the package "
                      "(docs/lwm-tiny.md)[/]", highlight=False)
    return files.checkpoint, config or files.config, tokenizer or files.tokenizer, vqgan or files.vqgan
