"""`lwm convert`: any checkpoint format to any other (LWM streaming, Hugging Face, orbax)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from lwm_cli.common import (
    MaxSequenceLengthOption, RopeThetaOption, changes_flags, config_changes, console, err_console, handle_errors,
)
from lwm_core.checkpoint import ProgressFn, checkpoint_config, load_params, parse_spec, save_params
from lwm_core.errors import LWMError

SPEC_HELP = ("params::FILE (LWM streaming), trainstate_params::FILE, FILE.msgpack, hf::DIR (Hugging Face "
             "LLaMA), orbax::DIR (lwm orbax)")


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressFn]:
    """A rich progress bar on stderr, fed by the `progress(done, total, item)` callbacks of lwm_core."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
               TextColumn("[dim]{task.fields[item]}"))
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None, item="")

        def update(done: int, total: int, item: str) -> None:
            bar.update(task, completed=done, total=total or None, item=item[-48:])

        yield update


@handle_errors
def convert(
    src: str = typer.Argument(..., help=f"Checkpoint to read: {SPEC_HELP}, or a model folder."),
    dst: str = typer.Argument(..., help=f"Checkpoint to write: {SPEC_HELP}."),
    config: str | None = typer.Option(
        None, "--config", help="Model preset (e.g. 7b-1m, debug) or a ModelConfig JSON file; needed when "
                               "SRC carries no config (LWM streaming) and DST stores one (hf, orbax). "
                               "Refused when it disagrees with the config SRC stores."),
    dtype: str | None = typer.Option(None, "--dtype", help="bfloat16 or float32 (default: as stored)."),
    layout: str = typer.Option("scanned", "--layout", help="scanned or unscanned layers (params:: only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
    vqgan: bool = typer.Option(False, "--vqgan", help="Convert VQGAN weights instead: LWM pickle (.pkl), "
                                                      "diffusers folder, or our .safetensors."),
    rope_theta: RopeThetaOption = None,
    max_sequence_length: MaxSequenceLengthOption = None,
):
    """Convert a checkpoint between LWM streaming msgpack, Hugging Face LLaMA and orbax
    (or, with --vqgan, VQGAN weights between LWM's pickle, a diffusers folder and .safetensors).

    DST stores the architecture of SRC's config (or of --config when SRC stores none); --rope-theta and
    --max-sequence-length change it on purpose.

    Example: lwm convert params::lwm-7b-1m.msgpack hf::LWM-Text-1M --config 7b-1m --dtype bfloat16
             lwm convert --vqgan vqgan.pkl vqgan-diffusers/
    """
    changes = config_changes(rope_theta, max_sequence_length)
    if vqgan:
        if changes:
            raise LWMError(f"{changes_flags(changes)} change a language model's config, not VQGAN weights")
        return convert_vqgan_weights(src, dst, overwrite=overwrite)
    if dtype not in (None, "bfloat16", "float32"):
        raise LWMError(f"--dtype must be bfloat16 or float32, got {dtype!r}")
    if layout not in ("scanned", "unscanned"):
        raise LWMError(f"--layout must be scanned or unscanned, got {layout!r}")
    source, target = parse_spec(src), parse_spec(dst, for_writing=True)
    # Fail before reading gigabytes: everything that can be checked without the weights.
    if target.path.exists() and not overwrite:
        raise LWMError(f"{target.path} already exists; pass --overwrite to replace it")
    if target.format != "lwm" and layout != "scanned":
        raise LWMError(f"--layout applies to params:: outputs only, not {target.format}::")
    if changes and target.format == "lwm":
        raise LWMError(f"{changes_flags(changes)} change the config a checkpoint stores, but params:: files "
                       "store none; write hf:: or orbax::, or pass them when loading the model")
    if source.format == "lwm" and target.format != "lwm" and config is None:
        raise LWMError(f"{source.path} carries no model config but {target.format}:: stores one: "
                       "pass --config (a preset such as 7b-1m, or a ModelConfig JSON file)")
    with progress_bar(f"reading {source.path.name}") as progress:
        ckpt = load_params(src, dtype=dtype, progress=progress)
    model_config = checkpoint_config(config, ckpt.params, ckpt.config, str(source.path), changes=changes)
    with progress_bar(f"writing {target.path.name}") as progress:
        save_params(ckpt.params, dst, config=model_config, dtype=dtype, layout=layout,
                    overwrite=overwrite, progress=progress)
    out_layout = {"lwm": layout, "hf": "unscanned", "orbax": "scanned"}[target.format]
    console.print(f"converted {source.path} ({ckpt.format}, {ckpt.layout}, {ckpt.dtype}) -> {target.path} "
                  f"({target.format}, {out_layout}, {dtype or ckpt.dtype}): {ckpt.num_params:,} parameters",
                  highlight=False, soft_wrap=True)


def convert_vqgan_weights(src: str, dst: str, *, overwrite: bool) -> None:
    """`lwm convert --vqgan`: the format of each side is told by its name (see lwm_core.vqgan.io)."""
    from lwm_core.vqgan import convert_vqgan, detect_format

    target = Path(dst)
    if target.exists() and not overwrite:
        raise LWMError(f"{target} already exists; pass --overwrite to replace it")
    with err_console.status(f"converting VQGAN weights {src}"):
        written = convert_vqgan(src, dst)
    console.print(f"converted VQGAN {src} ({detect_format(src)}) -> {dst} ({written})", highlight=False,
                  soft_wrap=True)
