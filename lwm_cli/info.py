"""`lwm info`: the JAX runtime, and what a checkpoint holds (format, layout, dtype, size, config)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import typer
from rich.table import Table

from lwm_cli.common import console, handle_errors
from lwm_cli.convert import SPEC_HELP, config_from_option, progress_bar, resolve_config
from lwm_core.checkpoint import describe_params, parse_spec


def runtime_info() -> dict[str, Any]:
    """JAX version, default backend, device count and kinds."""
    import jax

    devices = jax.devices()
    return {"jax_version": jax.__version__, "backend": jax.default_backend(), "device_count": len(devices),
            "device_kinds": dict(Counter(d.device_kind for d in devices))}


def checkpoint_info(spec: str, config_option: str | None, *, show_progress: bool) -> dict[str, Any]:
    """What `spec` holds, read without loading array data (LWM streaming files are scanned once)."""
    source = parse_spec(spec)
    if show_progress:
        with progress_bar(f"scanning {source.path.name}") as progress:
            ckpt = describe_params(spec, progress=progress)
    else:
        ckpt = describe_params(spec)
    config = resolve_config(config_option, ckpt.params, ckpt.config, str(source.path))
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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
):
    """Show the JAX runtime and, with --checkpoint, the checkpoint's format, layout, dtype and size.

    Example: lwm info --checkpoint params::lwm-7b.msgpack --config 7b-1m
    """
    report: dict[str, Any] = {"runtime": runtime_info()}
    if checkpoint is not None:
        report["checkpoint"] = checkpoint_info(checkpoint, config, show_progress=not as_json)
    elif config is not None:
        model = config_from_option(config)
        report["config"] = {**model.to_dict(), "num_params": model.num_params()}
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
