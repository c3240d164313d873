"""`lwm extend-context`: continue a checkpoint through stages of growing context and RoPE theta."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import Progress

from lwm_cli.common import console, err_console, handle_errors
from lwm_cli.train import PROGRESS_COLUMNS, step_reporter
from lwm_core.errors import LWMError


@handle_errors
def extend_context(
    checkpoint: str = typer.Argument(..., help="Checkpoint to extend: any spec (params::, hf::, orbax::, a run "
                                               "folder)."),
    schedule: str = typer.Option(..., "--schedule", help="LEN:THETA stages, e.g. '32K:1e6,128K:1e7', or 'lwm' "
                                                        "for the paper's text stages (32K..1M)."),
    out: Path | None = typer.Option(None, "--out", help="Folder: one run folder per stage; OUT loads as the "
                                                        "last one. Needed to train (not with --plan)."),
    data: list[str] = typer.Option(None, "--data", help="jsonl / txt files, folders or globs (repeat for more)."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="SentencePiece tokenizer.model or HF folder."),
    config: str | None = typer.Option(None, "--config", help="Preset or ModelConfig JSON, for a checkpoint that "
                                                             "stores none (params::)."),
    field: str = typer.Option("text", "--field", help="The jsonl key holding the text."),
    fields: str | None = typer.Option(None, "--fields", help="LWM's field syntax instead, e.g. "
                                                            "'\\[question],answer'. A record's own `fields` key "
                                                            "(e.g. needle conversations) wins over both."),
    steps_per_stage: int = typer.Option(500, "--steps-per-stage", help="Optimizer steps in every stage."),
    batch_size: int = typer.Option(1, "--batch-size", help="Rows per step."),
    lr: float = typer.Option(4e-5, "--lr", help="Learning rate (the paper's text stages: 4e-5 constant)."),
    warmup: int = typer.Option(5, "--warmup"),
    seed: int = typer.Option(0, "--seed"),
    shuffle: bool = typer.Option(False, "--shuffle", help="Visit each epoch's records in a random order (from "
                                 "--seed) across all --data files, instead of file by file."),
    save_every: int = typer.Option(500, "--save-every"),
    log_every: int = typer.Option(10, "--log-every"),
    mesh: str | None = typer.Option(None, "--mesh", metavar="DP,FSDP,TP,SP", help="e.g. 1,1,1,8: ring attention."),
    plan_only: bool = typer.Option(False, "--plan", help="Print the stages, tokens, memory per device and a time "
                                                        "estimate; train nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --plan: one JSON list."),
):
    """Extend a model's context stage by stage, each stage starting from the previous one's weights with
    its own rope_theta and max_sequence_length.

    Examples:
      lwm extend-context runs/text --schedule "32K:1e6,128K:1e7" --data books.jsonl
                         --tokenizer tokenizer.model --steps-per-stage 500 --out runs/long
      lwm extend-context runs/text --schedule lwm --plan --mesh 1,1,4,2
    """
    from lwm_core.checkpoint import checkpoint_config, describe_params
    from lwm_core.config import RANDOM_PREFIX, ModelConfig, resolve_config
    from lwm_core.train import TrainConfig
    from lwm_core.train.extend import describe, extend_context as run, parse_schedule, plan

    stages = parse_schedule(schedule)
    if checkpoint.startswith(RANDOM_PREFIX):
        model_config = resolve_config(config) or ModelConfig.from_name(checkpoint[len(RANDOM_PREFIX):])
    else:
        info = describe_params(checkpoint)
        model_config = checkpoint_config(config, info.params, info.config, checkpoint)
        if model_config is None:
            raise LWMError(f"{checkpoint} stores no config; pass --config (e.g. 7b)")
    if plan_only:
        rows = plan(model_config, stages, steps_per_stage=steps_per_stage, batch_size=batch_size,
                    mesh=mesh or "1,1,1,1")
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
        else:
            for line in describe(rows):
                console.print(line, highlight=False)
        return
    if not data or tokenizer is None or out is None:
        raise LWMError("training needs --data, --tokenizer and --out (or pass --plan to only print the stages)")

    from lwm_core.data import DataLoader, RecordProcessor
    from lwm_core.mesh import axis_size, make_mesh, seq_axis
    from lwm_core.text import load_tokenizer

    device_mesh = make_mesh(mesh) if mesh else None
    ring = axis_size(device_mesh, seq_axis()) > 1
    processor = RecordProcessor(load_tokenizer(tokenizer), fields or field, fields_from_example="fields", seed=seed)

    def batches_for(stage):
        return DataLoader(data, processor, batch_size=batch_size, seq_length=stage.seq_len, epochs=None, prefetch=2,
                          shuffle=shuffle)

    current = {}  # the live stage's on_step

    def on_stage(k, stage, model):
        err_console.print(f"stage {k}/{len(stages)}: {stage.seq_len:,} tokens, rope_theta {stage.rope_theta:.3g}")
        task = bar.add_task(f"stage {k}", total=steps_per_stage, info="compiling")
        current["on_step"] = step_reporter(bar, task, model.config, rows=batch_size, seq_len=stage.seq_len,
                                           dtype=None, every=log_every, vision=False)

    run_options = {"remat_block": "nothing_saveable", "attention_impl": "ring" if ring else "blockwise"}
    if ring:
        run_options["sequence_layout"] = "zigzag"
    with Progress(*PROGRESS_COLUMNS, console=err_console, transient=False) as bar:
        folders = run(checkpoint, stages, batches_for, out_dir=out, steps_per_stage=steps_per_stage,
                      train_config=TrainConfig(lr=lr, warmup=warmup, seed=seed, steps=steps_per_stage,
                                               save_every=save_every, log_every=log_every),
                      config=config, mesh=device_mesh, on_stage=on_stage,
                      on_step=lambda step, metrics: current["on_step"](step, metrics), **run_options)
    console.print(f"{len(folders)} stages done; lwm_core.load_model('{out}') gives the last one "
                  f"({stages[-1].seq_len:,} tokens, theta {stages[-1].rope_theta:.3g})")
