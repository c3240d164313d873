"""`lwm info`: the JAX runtime, and what a checkpoint holds (format, layout, dtype, size, config)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import typer
from rich.table import Table

from lwm_cli.common import (
    MaxSequenceLengthOption, RopeThetaOption, changes_flags, config_changes, console, err_console, handle_errors,
)
from lwm_cli.convert import SPEC_HELP, progress_bar
from lwm_core.errors import LWMError
from lwm_core.config import RANDOM_PREFIX, apply_changes, random_config, resolve_config
from lwm_core.checkpoint import checkpoint_config, describe_params, parse_spec


def runtime_info() -> dict[str, Any]:
    """JAX version, default backend, device count and kinds."""
    import jax

    devices = jax.devices()
    return {"jax_version": jax.__version__, "backend": jax.default_backend(), "device_count": len(devices),
            "device_kinds": dict(Counter(d.device_kind for d in devices))}


def checkpoint_info(spec: str, config_option: str | None, *, show_progress: bool,
                    changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `spec` holds, read without loading array data (LWM streaming files are scanned once), and
    the config a model loaded from it gets (with `changes` applied)."""
    source = parse_spec(spec)
    if show_progress:
        with progress_bar(f"scanning {source.path.name}") as progress:
            ckpt = describe_params(spec, progress=progress)
    else:
        ckpt = describe_params(spec)
    config = checkpoint_config(config_option, ckpt.params, ckpt.config, str(source.path), changes=changes)
    if config is None and changes:
        raise LWMError(f"{source.path} stores no config for {changes_flags(changes)} to change; "
                       "pass --config too (a preset such as 7b-1m, or a ModelConfig JSON file)")
    return {"path": str(source.path), "format": ckpt.format, "layout": ckpt.layout, "dtype": ckpt.dtype,
            "num_params": ckpt.num_params, "vision": ckpt.vision,
            "config": None if config is None else config.to_dict()}


def _table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        table.add_row(key.replace("_", " "), str(value))
    return table


@handle_errors
def info(
    checkpoint: str | None = typer.Option(None, "--checkpoint", help=f"Checkpoint to describe: {SPEC_HELP}."),
    config: str | None = typer.Option(None, "--config", help="Model preset (e.g. 7b-1m) or ModelConfig JSON."),
    forward: int | None = typer.Option(None, "--forward", metavar="TOKENS",
                                       help="Also load the model and time one forward pass over this many "
                                            "random tokens (checks the weights run here)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    rope_theta: RopeThetaOption = None,
    max_sequence_length: MaxSequenceLengthOption = None,
):
    """Show the JAX runtime and, with --checkpoint, the checkpoint's format, layout, dtype and size.

    A --config that disagrees with the config a checkpoint stores is refused; --rope-theta and
    --max-sequence-length change it on purpose, and the config shown is the one a model would get.

    Example: lwm info --checkpoint params::lwm-7b.msgpack --config 7b-1m
             lwm info --checkpoint random:200m --forward 2048
             lwm info --checkpoint hf::LWM-Text-1M --rope-theta 1e8 --max-sequence-length 2097152
    """
    changes = config_changes(rope_theta, max_sequence_length)
    if changes and checkpoint is None and config is None:
        raise LWMError(f"{changes_flags(changes)} change a model's config: pass --checkpoint or --config too")
    report: dict[str, Any] = {"runtime": runtime_info()}
    if forward is not None and checkpoint is None:
        raise LWMError("--forward needs --checkpoint (a checkpoint spec, or random:PRESET such as random:debug)")
    if checkpoint is not None and checkpoint.startswith(RANDOM_PREFIX):
        model_config = apply_changes(random_config(checkpoint, config), changes)
        report["checkpoint"] = {"path": checkpoint, "format": "random (untrained weights)",
                                "num_params": model_config.num_params(), "vision": model_config.vision,
                                "config": model_config.to_dict()}
    elif checkpoint is not None:
        report["checkpoint"] = checkpoint_info(checkpoint, config, show_progress=not as_json, changes=changes)
    if forward is not None:
        from lwm_core.loading import load_model  # imports JAX: only when a model is run
        from lwm_core.probe import probe_forward

        if as_json:
            model = load_model(checkpoint, config, **changes)
        else:
            with progress_bar(f"loading {checkpoint}") as progress:
                model = load_model(checkpoint, config, progress=progress, **changes)
        with err_console.status(f"compiling and running a forward pass over {forward} tokens"):
            report["forward"] = probe_forward(model, forward)
    elif config is not None:
        model_config = apply_changes(resolve_config(config), changes)
        report["config"] = {**model_config.to_dict(), "num_params": model_config.num_params()}
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    console.print(_table("runtime", report["runtime"]))
    if "checkpoint" in report:
        ckpt = dict(report["checkpoint"])
        model = ckpt.pop("config")
        ckpt["config"] = "none (the format stores none; pass --config)" if model is None else "see below"
        console.print(_table("checkpoint", ckpt))
        if model is not None:
            console.print(_table("config", model))
    elif "config" in report:
        console.print(_table("config", report["config"]))
    if "forward" in report:
        console.print(_table("forward pass", report["forward"]))
