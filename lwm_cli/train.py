"""`lwm train --stage 1|2`: LWM's recipe with masked sequence packing (lwm_core.data + lwm_core.train)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from lwm_cli.common import console, err_console, handle_errors, parse_vqgan_config
from lwm_core.errors import LWMError

PACKINGS = ("masked", "concat", "pad")
OVERFLOWS = ("split", "truncate", "skip")  # lwm_core.data.packing.OVERFLOWS


PROGRESS_COLUMNS = (TextColumn("step {task.completed:.0f}/{task.total:.0f}"), BarColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn())


def step_reporter(bar: Progress, task, model_config, *, rows: int, seq_len: int, dtype: str | None, every: int,
                  vision: bool):
    """on_step(step, metrics) for `lwm_core.train.train` that keeps `task` of `bar` at the step with
    loss (stage 2: text and vision loss / accuracy), tokens/s (rows x seq_len per step over the wall
    time since this call, compilation included), MFU and the learning rate, every min(every, 10) steps."""
    from lwm_core.train.flops import matmul_flops_per_s, train_flops_per_token

    # MFU: model FLOPs per second over the matmul rate of this process's devices (lwm_core.train.flops)
    peak = matmul_flops_per_s(dtype or model_config.dtype)
    flops_per_token = train_flops_per_token(model_config, seq_len)
    started = time.perf_counter()
    first_step: list[int] = []  # a resumed run starts past 0: rate over this run's steps only
    total = bar.tasks[task].total

    def on_step(step: int, metrics: dict) -> None:
        if not first_step:
            first_step.append(step - 1)
        info = bar.tasks[task].fields["info"]
        if step % max(1, min(every, 10)) == 0 or step == total:
            m = {k: float(v) for k, v in metrics.items() if k in ("loss", "text_loss", "vision_loss", "lr",
                                                                 "text_accuracy", "vision_accuracy")}
            info = f"loss {m.get('loss', float('nan')):.4f}"
            if vision:
                info += (f"  text {m.get('text_loss', 0):.3f}/{m.get('text_accuracy', 0):.0%}"
                         f"  vision {m.get('vision_loss', 0):.3f}/{m.get('vision_accuracy', 0):.0%}")
            tokens_per_s = (step - first_step[0]) * rows * seq_len / max(time.perf_counter() - started, 1e-9)
            info += (f"  {tokens_per_s:,.0f} tok/s  MFU {tokens_per_s * flops_per_token / peak:.1%}"
                     f"  lr {m.get('lr', 0):.2e}")
        bar.update(task, completed=step, info=info)

    return on_step


def _distributed(coordinator, num_processes, process_id) -> tuple[int, int]:
    """Start jax.distributed when asked; returns (this host's index, host count) for data sharding."""
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise LWMError("--num-processes / --process-id need --coordinator HOST:PORT")
        return 0, 1
    if num_processes is None or process_id is None:
        raise LWMError("--coordinator needs --num-processes and --process-id")
    import jax

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return process_id, num_processes


@handle_errors
def train(
    stage: str = typer.Option("1", "--stage", help="1: text; 2: vision-language (vision fields, token files); "
                                                   "vqgan: a VQGAN on videos / images; tokenizer: SentencePiece."),
    data: list[str] = typer.Option(..., "--data", help="jsonl / txt files, folders or globs (repeat for more)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, metrics.jsonl, loss.png; "
                                                "`lwm_core.load_model(OUT)` reads its newest weights. "
                                                "Stage vqgan: the VQGAN file; tokenizer: tokenizer.model."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="SentencePiece tokenizer.model or a HF folder "
                                                                   "(stages 1 and 2)."),
    config: str | None = typer.Option(None, "--config", help="Model preset (e.g. 200m) or ModelConfig JSON; "
                                                             "needed without --init."),
    init: str | None = typer.Option(None, "--init", help="Start from this checkpoint spec (any format, or "
                                                         "a previous run folder). Stage 2 from a text "
                                                         "checkpoint adds fresh vision embeddings and head."),
    field: str = typer.Option("text", "--field", help="Stage 1: the jsonl key holding the text."),
    fields: str | None = typer.Option(None, "--fields", help="LWM's field syntax, e.g. '\\[question],answer' "
                                                            "(bracketed fields carry no loss). A record's own "
                                                            "`fields` key wins (LWM's per-record fields)."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per packed row."),
    batch_size: int = typer.Option(8, "--batch-size", help="Rows per optimizer step (all processes together)."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps to reach."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 8e-5; stage vqgan 1e-3)."),
    warmup: int = typer.Option(5, "--warmup", help="Linear warmup steps."),
    schedule: str = typer.Option("constant", "--schedule", help="constant or cosine."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW decay (dense kernels only)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step."),
    seed: int = typer.Option(0, "--seed"),
    shuffle: bool = typer.Option(False, "--shuffle", help="Visit each epoch's records in a random order (from "
                                 "--seed) across all --data files, instead of file by file; --resume continues it."),
    save_every: int = typer.Option(500, "--save-every", help="Checkpoint every N steps (and at the end)."),
    keep: int = typer.Option(3, "--keep", help="Checkpoints kept."),
    log_every: int = typer.Option(10, "--log-every", help="metrics.jsonl line every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest checkpoint in --out exactly."),
    mesh: str | None = typer.Option(None, "--mesh", metavar="DP,FSDP,TP,SP",
                                    help="Device mesh, e.g. 1,-1,1,1 (FSDP) or 1,1,1,8 (ring attention)."),
    dtype: str | None = typer.Option(None, "--dtype", help="Compute dtype: float32 or bfloat16."),
    packing: str = typer.Option("masked", "--packing", help="masked (segment ids, per-example loss weights), "
                                                          "or LWM's own concat / pad."),
    overflow: str = typer.Option("split", "--overflow", help="An example longer than --seq-len: split into "
                                                           "pieces, truncate, or skip (counted and reported)."),
    remat: str = typer.Option("nothing_saveable", "--remat", help="Rematerialisation policy of each layer "
                                                                 "('' for none)."),
    loss_chunk: int = typer.Option(1024, "--loss-chunk", help="Tokens per chunk of the loss."),
    swap_prob: float = typer.Option(0.0, "--swap-prob",
                                    help="Stage 2: chance to swap the order of the vision and text fields."),
    freeze: str = typer.Option("", "--freeze", help="'text': stage 2 trains only the vision embedding and head."),
    vqgan_config: str | None = typer.Option(None, "--vqgan-config", help="Stage 2: VQGAN preset or JSON "
                                                                        "(codes per frame); default LWM's. "
                                                                        "Stage vqgan: the architecture."),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stage 2 (and vqgan): keep at most N frames "
                                                                    "per clip."),
    foreground_weight: float = typer.Option(1.0, "--foreground-weight", help="Stage vqgan: reconstruction weight "
                                            "of pixels off the frame's background (its median colour); "
                                            "above 1 for flat backgrounds."),
    vocab_size: int = typer.Option(1024, "--vocab-size", help="Stage tokenizer: pieces (bos, eos, unk and 256 "
                                                              "byte pieces included)."),
    coordinator: str | None = typer.Option(None, "--coordinator", help="HOST:PORT of process 0 (multi-host)."),
    num_processes: int | None = typer.Option(None, "--num-processes"),
    process_id: int | None = typer.Option(None, "--process-id"),
):
    """Train a text model (stage 1) or a vision-language model (stage 2) with masked sequence packing,
    or the VQGAN and the SentencePiece tokenizer they read.

    Examples:
      lwm train --stage 1 --data books.jsonl --tokenizer tokenizer.model --config 200m --seq-len 8192
                --batch-size 4 --steps 1000 --out runs/text
      lwm train --stage 2 --data vision.jsonl --tokenizer tokenizer.model --init runs/text --out runs/vision
      lwm train --stage vqgan --data clips/ --vqgan-config lwm-tiny --steps 2000 --out vqgan.safetensors
      lwm train --stage tokenizer --data text.jsonl --vocab-size 1024 --out tokenizer.model
    """
    if stage not in ("1", "2", "vqgan", "tokenizer"):
        raise LWMError(f"--stage must be 1 (text), 2 (vision-language), vqgan or tokenizer, got {stage!r}")
    if stage == "vqgan":
        from lwm_cli.train_assets import train_vqgan_stage

        return train_vqgan_stage(data, out, vqgan_config=vqgan_config, init=init, steps=steps,
                                 batch_size=batch_size, lr=lr, warmup=warmup, seed=seed, log_every=log_every,
                                 save_every=save_every, max_frames=max_frames, foreground_weight=foreground_weight)
    if stage == "tokenizer":
        from lwm_cli.train_assets import train_tokenizer_stage

        return train_tokenizer_stage(data, out, vocab_size=vocab_size)
    if tokenizer is None:
        raise LWMError(f"--stage {stage} needs --tokenizer (a SentencePiece tokenizer.model or a HF folder)")
    lr = 8e-5 if lr is None else lr
    if packing not in PACKINGS:
        raise LWMError(f"--packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
    if overflow not in OVERFLOWS:
        raise LWMError(f"--overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")
    if init is None and config is None and not resume:
        raise LWMError("pass --config (a preset such as 200m) to train from scratch, or --init CHECKPOINT")
    host, hosts = _distributed(coordinator, num_processes, process_id)
    if batch_size % hosts:
        raise LWMError(f"--batch-size {batch_size} (the global batch) does not split over {hosts} processes; "
                       f"make it a multiple of {hosts}")

    from lwm_core.data import DataLoader, RecordProcessor, VisionSpec
    from lwm_core.data.readers import expand_paths
    from lwm_core.mesh import axis_size, make_mesh, seq_axis
    from lwm_core.text import load_tokenizer
    from lwm_core.train import TrainConfig
    from lwm_core.train import train as run
    from lwm_core.train.init import initial_model
    from lwm_core.train.plot import loss_curve_png

    train_config = TrainConfig(lr=lr, schedule=schedule, warmup=warmup, weight_decay=weight_decay,
                               grad_accum=grad_accum, seed=seed, steps=steps, save_every=save_every, keep=keep,
                               log_every=log_every, loss_chunk_size=loss_chunk, freeze=freeze, dtype=dtype)
    device_mesh = make_mesh(mesh) if mesh else None
    sp = axis_size(device_mesh, seq_axis())
    if seq_len % sp:  # before any loading: every row is split over sp
        raise LWMError(f"--seq-len {seq_len} does not divide by sp={sp} of --mesh {mesh}; pick a multiple of {sp}")
    ring = sp > 1
    tok = load_tokenizer(tokenizer)
    expand_paths(data)  # missing data files fail here, before the model loads
    vision = stage == "2"
    vq_config = parse_vqgan_config(vqgan_config) if vision else None
    codes = VisionSpec.from_vqgan(vq_config).num_codes if vision else None
    run_options = {"remat_block": remat, "attention_impl": "ring" if ring else "blockwise"}
    if ring:
        run_options["sequence_layout"] = "zigzag"
    source = init
    if source is None and resume and (out / "lwm_config.json").is_file():
        source = str(out)  # the architecture of the run being resumed; its state is restored by the trainer
    with err_console.status("loading the model"):
        model = initial_model(source, config, vision=vision, mesh=device_mesh, seed=seed,
                              vision_codes=codes, **run_options)
    if seq_len > model.config.max_sequence_length:  # before anything is written into --out
        raise LWMError(f"--seq-len {seq_len} would exceed max_sequence_length {model.config.max_sequence_length} "
                       "of the model; pick a shorter --seq-len, or lengthen the model with `lwm extend-context`")
    if model.config.vocab_size < tok.vocab_size:
        raise LWMError(f"the tokenizer has {tok.vocab_size} pieces but the model only {model.config.vocab_size} "
                       "text ids; pick a matching tokenizer or config")
    # the vision span's end ids are the model's (its code slots), the frame geometry the VQGAN's
    spec = VisionSpec.from_vqgan(vq_config, model.config.vision_codes) if vision else None
    processor = RecordProcessor(tok, fields or (None if vision else field),
                                fields_from_example="fields", vision=spec,
                                max_n_frames=max_frames, swap_prob=swap_prob, seed=seed)
    # each process packs its own rows from its own lines; the trainer stacks them into the global batch
    loader = DataLoader(data, processor, batch_size=batch_size // hosts, seq_length=seq_len, packing=packing,
                        overflow=overflow, shard_index=host, shard_count=hosts, epochs=None, prefetch=2,
                        shuffle=shuffle)

    started = time.perf_counter()
    with Progress(*PROGRESS_COLUMNS, console=err_console, transient=False) as bar:
        on_step = step_reporter(bar, bar.add_task("train", total=steps, info="compiling"), model.config,
                                rows=batch_size, seq_len=seq_len, dtype=dtype, every=log_every, vision=vision)
        try:
            run(train_config, model, loader, out_dir=out, mesh=device_mesh, on_step=on_step, resume=resume)
        finally:
            loader.close()
    png = loss_curve_png(out / "metrics.jsonl", out / "loss.png") if (out / "metrics.jsonl").is_file() else None
    stats = loader.stats
    console.print(f"trained to step {steps} in {time.perf_counter() - started:.0f} s; weights: {out} "
                  f"(lwm_core.load_model('{out}')); metrics: {out / 'metrics.jsonl'}"
                  + (f"; loss curve: {png}" if png else ""))
    skipped = {k: v for k, v in stats.items() if v and k in ("malformed_lines", "bad_records", "skipped_too_long",
                                                             "skipped_no_loss", "truncated", "split")}
    if skipped:
        console.print("data: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
