"""`lwm info`: the JAX runtime, what a checkpoint holds (format, layout, dtype, size, config), and with
--mesh how its weights and a KV cache would be laid out per device (planned from shapes alone)."""

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
from lwm_core.config import RANDOM_PREFIX, ModelConfig, apply_changes, random_config, resolve_config
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


_LENGTH_SUFFIXES = {"k": 1024, "m": 1024 * 1024}


def parse_length(text: str) -> int:
    """A token count: '32768', '32K' (= 32768), '1M' (= 1048576); K and M are powers of two."""
    value = text.strip().lower()
    scale = _LENGTH_SUFFIXES.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit() or int(digits) < 1:
        raise LWMError(f"cache length {text!r} must be a positive whole number of tokens, optionally with K or M "
                       "(32K = 32768, 1M = 1048576)")
    return int(digits) * scale


_STACK_PREFIX = "transformer/h/scan_decoder/"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB ({n / 2**30:,.2f} GiB)"


def _dims(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _spec(spec) -> str:
    parts = ["-" if p is None else "+".join(p) if isinstance(p, list) else p for p in spec]
    return ",".join(parts)


def print_layout(layout: dict[str, Any], num_layers: int) -> None:
    """The weights table (one row per checkpoint key: a decoder weight is one stacked row for all
    layers), the cache row, the per-device summary and the notes."""
    mesh = ",".join(f"{k}={v}" for k, v in layout["mesh"].items())
    table = Table(title=f"layout on mesh {mesh} ({layout['devices']} devices), weights in {layout['param_dtype']}",
                  title_justify="left", caption=f"h/...: the {num_layers} decoder layers, stacked on the first "
                  "dimension. spec: the mesh axes each dimension is split over (- = not split). Global "
                  "shapes: --json.",
                  caption_justify="left")
    table.add_column("weight", no_wrap=True)
    table.add_column("spec")
    table.add_column("shard shape")
    table.add_column("MiB/device", justify="right", no_wrap=True)
    for key, weight in layout["weights"].items():
        name = "h/" + key[len(_STACK_PREFIX):] if key.startswith(_STACK_PREFIX) else key.removeprefix("transformer/")
        table.add_row(name, _spec(weight["spec"]), _dims(weight["shard_shape"]), _mib(weight["bytes_per_device"]))
    cache = layout["cache"]
    table.add_section()
    table.add_row("kv cache k+v", _spec(cache["spec"]), _dims(cache["shard_shape"]), _mib(cache["bytes_per_device"]),
                  style="cyan")
    console.print(table)
    console.print(_table("per device", {
        "params": _size(layout["param_bytes_per_device"]),
        "kv cache": f"{_size(cache['bytes_per_device'])}: k and v, {cache['length']:,} tokens x batch "
                    f"{cache['batch_size']}, {cache['dtype']}",
        "total": _size(layout["total_bytes_per_device"]),
        "devices": f"{layout['devices']} ({mesh}); all weights {_size(layout['param_bytes'])}",
    }))
    for note in layout["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


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
    mesh: str | None = typer.Option(
        None, "--mesh", metavar="DP,FSDP,TP,SP",
        help="Plan the layout on this mesh from shapes alone: each weight's sharding and shard shape, a KV "
             "cache's, and the memory per device. Needs no such devices here (e.g. 1,16,4,1 for 64 chips)."),
    cache_length: str | None = typer.Option(
        None, "--cache-length", metavar="TOKENS",
        help="KV-cache length for --mesh, e.g. 32768, 32K or 1M (K = 1024). Default: the model's "
             "max_sequence_length rounded up to a multiple of sp."),
    batch_size: int = typer.Option(1, "--batch-size", metavar="N", help="Rows of the KV cache for --mesh."),
    rope_theta: RopeThetaOption = None,
    max_sequence_length: MaxSequenceLengthOption = None,
):
    """Show the JAX runtime and, with --checkpoint, the checkpoint's format, layout, dtype and size.

    A --config that disagrees with the config a checkpoint stores is refused; --rope-theta and
    --max-sequence-length change it on purpose, and the config shown is the one a model would get.

    With --mesh DP,FSDP,TP,SP it also plans, without loading weights or needing the devices, how
    the weights and a KV cache of --cache-length tokens would be sharded, and the memory per device.

    Example: lwm info --checkpoint params::lwm-7b.msgpack --config 7b-1m
             lwm info --checkpoint random:200m --forward 2048
             lwm info --checkpoint hf::LWM-Text-1M --rope-theta 1e8 --max-sequence-length 2097152
             lwm info --config 7b-1m --mesh 1,16,4,1 --cache-length 1M
    """
    changes = config_changes(rope_theta, max_sequence_length)
    if changes and checkpoint is None and config is None:
        raise LWMError(f"{changes_flags(changes)} change a model's config: pass --checkpoint or --config too")
    report: dict[str, Any] = {"runtime": runtime_info()}
    if mesh is None and (cache_length is not None or batch_size != 1):
        raise LWMError("--cache-length and --batch-size size the KV cache of a --mesh layout: pass --mesh too")
    if mesh is not None:
        if checkpoint is None and config is None:
            raise LWMError("--mesh lays out a model: pass --checkpoint or --config too (e.g. --config 7b-1m)")
        from lwm_core.layout import plan_layout, planning_mesh  # shapes only: needs none of the devices

        planning_mesh(mesh)  # a malformed --mesh or --cache-length fails before a checkpoint is scanned
        length = None if cache_length is None else parse_length(cache_length)
    if forward is not None and checkpoint is None:
        raise LWMError("--forward needs --checkpoint (a checkpoint spec, or random:PRESET such as random:debug)")
    if checkpoint is not None and checkpoint.startswith(RANDOM_PREFIX):
        model_config = apply_changes(random_config(checkpoint, config), changes)
        report["checkpoint"] = {"path": checkpoint, "format": "random (untrained weights)",
                                "num_params": model_config.num_params(), "vision": model_config.vision,
                                "config": model_config.to_dict()}
    elif checkpoint is not None:
        report["checkpoint"] = checkpoint_info(checkpoint, config, show_progress=not as_json, changes=changes)
    if mesh is not None:
        stored = report["checkpoint"]["config"] if checkpoint is not None else None
        if checkpoint is not None and stored is None:
            raise LWMError(f"{checkpoint} stores no config to lay out on --mesh; pass --config too "
                           "(a preset such as 7b-1m, or a ModelConfig JSON file)")
        layout_config = (ModelConfig.from_dict(stored) if stored is not None
                         else apply_changes(resolve_config(config), changes))
        report["layout"] = plan_layout(layout_config, mesh, cache_length=length, batch_size=batch_size)
    if forward is not None:
        import jax

        from lwm_core.loading import load_model  # imports JAX: only when a model is run
        from lwm_core.mesh import make_mesh
        from lwm_core.probe import probe_forward

        run_mesh = None
        if mesh is not None:  # run on that mesh when this machine has its devices
            wanted = report["layout"]["devices"]
            if wanted != jax.device_count():
                raise LWMError(f"--forward on --mesh {mesh} needs {wanted} devices but this machine has "
                               f"{jax.device_count()}; drop --forward to plan only, or pick a mesh of "
                               f"{jax.device_count()} devices")
            run_mesh = make_mesh(mesh)
        if as_json:
            model = load_model(checkpoint, config, mesh=run_mesh, **changes)
        else:
            with progress_bar(f"loading {checkpoint}") as progress:
                model = load_model(checkpoint, config, progress=progress, mesh=run_mesh, **changes)
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
    if "layout" in report:
        print_layout(report["layout"], layout_config.num_hidden_layers)
