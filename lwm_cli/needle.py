"""`lwm needle`: needle-in-a-haystack retrieval over a context-length x depth grid (lwm_core.evals)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lwm_cli.common import (
    MaxSequenceLengthOption, RopeThetaOption, config_changes, console, default_model, err_console, handle_errors,
)
from lwm_core.errors import LWMError

_BYTES = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """'40GiB', '40G', '512MB', '1000000' -> bytes (K, M, G, T are powers of 1024)."""
    value = text.strip().lower().replace(" ", "")
    number = value.rstrip("kmgtib")
    unit = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _BYTES or amount <= 0:
        raise LWMError(f"--max-memory {text!r} must be a size per device such as 40GiB, 40G or 512MiB")
    return int(amount * _BYTES[unit])


def _device_mesh(spec: str | None):
    """The run's mesh: `spec` over the first devices it needs (all of them with a -1)."""
    import math

    import jax

    from lwm_core.mesh import make_mesh

    if spec is None:
        return None
    try:
        sizes = [int(s) for s in spec.split(",")]
    except ValueError:
        sizes = []
    devices = jax.devices()
    if len(sizes) == 4 and -1 not in sizes and 0 < math.prod(sizes) <= len(devices):
        devices = devices[:math.prod(sizes)]
    return make_mesh(spec, devices)


def _model_config(checkpoint: str, config: str | None, changes: dict, dtype: str | None):
    """The model's config from the checkpoint's metadata (no weights read)."""
    from lwm_core.checkpoint import checkpoint_config, describe_params
    from lwm_core.config import RANDOM_PREFIX, apply_changes, random_config

    if checkpoint.startswith(RANDOM_PREFIX):
        model_config = apply_changes(random_config(checkpoint, config), changes)
    else:
        info = describe_params(checkpoint)
        model_config = checkpoint_config(config, info.params, info.config, checkpoint, changes=changes)
        if model_config is None:
            raise LWMError(f"{checkpoint} stores no model config; pass --config (e.g. 7b-1m)")
    return model_config.replace(dtype=dtype) if dtype else model_config


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def print_plan(plan: dict, pending: int) -> None:
    from lwm_core.evals.heatmap import length_label

    mesh = ",".join(f"{k}={v}" for k, v in plan["mesh"].items())
    seconds = plan["estimated_s"]
    took = (f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h" if seconds < 172800
            else f"{seconds / 86400:,.0f} days")
    table = Table(title="needle plan", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("grid", f"{len(plan['lengths'])} lengths x {len(plan['depths'])} depths = {plan['cells']} cells, "
                          f"{plan['rounds']} round(s): {plan['trials']} trials ({pending} to run)")
    table.add_row("lengths", ", ".join(length_label(n) for n in plan["lengths"]))
    table.add_row("depths", ", ".join(f"{d:g}" for d in plan["depths"]))
    table.add_row("largest prefill", f"{plan['largest_prefill']:,} tokens in chunks of {plan['chunk_size']:,}; "
                                     f"KV cache {plan['cache_length']:,} slots x batch {plan['batch_size']}")
    budget = f" of --max-memory {_gib(plan['max_memory'])}" if plan["max_memory"] else ""
    table.add_row("memory/device", f"{_gib(plan['memory_per_device'])}{budget} (weights "
                                   f"{_gib(plan['weights_per_device'])}, cache {_gib(plan['cache_per_device'])}); "
                                   f"mesh {mesh}")
    table.add_row("estimate", f"~{took} for all trials at half the measured matmul rate "
                              f"({plan['flops_per_s'] / 1e12:,.2f} TFLOP/s here)")
    err_console.print(table)


def _grid_table(rows, depths, scores: dict, what: str) -> Table:
    """The live grid: a row per length (or frame count), a column per depth, each cell its mean score."""
    from lwm_core.evals.heatmap import length_label, score_colour

    table = Table(title=f"score by {what} (rows) and depth % (columns)", title_justify="left")
    table.add_column(what.split()[-1], justify="right")
    for depth in depths:
        table.add_column(f"{depth:g}", justify="center")
    for length in rows:
        cells = []
        for depth in depths:
            values = scores.get((length, depth))
            if not values:
                cells.append("[dim]·[/]")
                continue
            mean = sum(values) / len(values)
            r, g, b = score_colour(mean)
            cells.append(f"[on #{r:02x}{g:02x}{b:02x}] {mean:.2f} [/]")
        table.add_row(length_label(length), *cells)
    return table


def _run_live(rows, depths, what: str, done: list[dict], keys: set, total: int, run_fn, info_fn) -> list[dict]:
    """`run_fn(on_batch)` under a live grid and a progress bar; returns its records."""
    from lwm_core.evals.runner import record_key

    scores: dict = {}
    add = lambda r: scores.setdefault((r["context_length"], r["depth_percent"]), []).append(float(r["correct"]))
    for r in done:
        if record_key(r) in keys:
            add(r)
    progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=err_console)
    bar = progress.add_task("needle", total=total, completed=sum(len(v) for v in scores.values()), info="compiling")
    with Live(Group(_grid_table(rows, depths, scores, what), progress), console=err_console,
              refresh_per_second=4) as live:
        def on_batch(new, count, _total):
            for r in new:
                add(r)
            progress.update(bar, completed=count, info=info_fn(new[-1]))
            live.update(Group(_grid_table(rows, depths, scores, what), progress))

        return run_fn(on_batch)


def _summary_line(records: list[dict], png: Path, out: Path) -> str:
    from lwm_core.evals import summary
    from lwm_core.evals.heatmap import length_label

    s = summary(records)
    if not s["trials"]:
        return f"no trials in {out}"
    per = ", ".join(f"{length_label(n)} {v:.2f}" for n, v in s["per_length"].items())
    return f"{s['trials']} trials, mean score {s['mean']:.3f} (by length: {per}); results: {out}; heatmap: {png}"


@handle_errors
def needle(
    ctx: str | None = typer.Option(None, "--ctx", help="Largest context length (1M = 1,048,576 tokens, 128K = "
                                                      "131,072, in the model's tokenizer), or a list '4K,32K'."),
    ctx_min: str | None = typer.Option(None, "--ctx-min", help="Smallest length of LWM's linspace (default 1000)."),
    n_ctx: int | None = typer.Option(None, "--n-ctx", help="How many lengths from --ctx-min to --ctx."),
    n_depth: int | None = typer.Option(None, "--n-depth", help="Depths round(linspace(0, 100, N)); default 10."),
    depths: str | None = typer.Option(None, "--depths", help="Explicit depth percents, e.g. '0,50,100'."),
    rounds: int = typer.Option(1, "--rounds", help="Trials per cell (each round uses another part of the haystack)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Model: params::PATH, hf::FOLDER, an orbax "
                                                                    "folder, or random:PRESET to try the tool."),
    config: str | None = typer.Option(None, "--config", help="Preset (e.g. 7b-1m) or ModelConfig JSON for a "
                                                             "checkpoint that stores none."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="The model's tokenizer.model or HF folder "
                                                                 "(lengths are measured in it)."),
    haystack: Path | None = typer.Option(None, "--haystack", help="jsonl of {\"text\": ...} lines (PG-19) or "
                                                                 ".txt; default: RULER's noise sentences."),
    field: str = typer.Option("text", "--field", help="The jsonl key holding the haystack text."),
    task: str = typer.Option("lwm", "--task", help="lwm (LWM's needle) or RULER's single_1/2/3, multikey_1/2/3, "
                                                  "multivalue, multiquery."),
    needles: int = typer.Option(1, "--needles", help="LWM's multi-needle: needles with distinct cities and depths."),
    retrieve: int = typer.Option(1, "--retrieve", help="How many of the needles the question asks for."),
    out: Path = typer.Option(Path("needle_results.json"), "--out", help="Results JSON (appended as it goes; a "
                                                                       "rerun resumes). The heatmap goes beside "
                                                                       "it as .png."),
    plot: Path | None = typer.Option(None, "--plot", help="Only redraw the heatmap of this results JSON."),
    plan_only: bool = typer.Option(False, "--plan", help="Print the plan (cells, memory, time) and stop."),
    mesh: str | None = typer.Option(None, "--mesh", metavar="DP,FSDP,TP,SP",
                                    help="Device mesh, e.g. 1,1,1,8: the cache and attention split over sp."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Memory per device to plan for, e.g. "
                                                                     "40GiB (default: the device's limit if known)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Trials of one length per generate call (lowered "
                                                          "to fit --max-memory)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Greedy tokens per answer."),
    buffer: int = typer.Option(200, "--buffer", help="Tokens of each length kept free for the answer (LWM: 200)."),
    chunk_size: int = typer.Option(2048, "--chunk-size", help="Prompt tokens per prefill step."),
    seed: int = typer.Option(1234, "--seed", help="Draws the cities, numbers and keys (LWM: 1234)."),
    dtype: str | None = typer.Option(None, "--dtype", help="Compute dtype: float32 or bfloat16."),
    video: Path | None = typer.Option(None, "--video", help="LongVA's visual needle: the haystack video "
                                                           "(vision-language models)."),
    needle_image: Path | None = typer.Option(None, "--needle-image", help="With --video: the needle frame."),
    question: str | None = typer.Option(None, "--question", help="With --video: the question about the needle."),
    answer: str | None = typer.Option(None, "--answer", help="With --video: its short answer (scored)."),
    frames: str | None = typer.Option(None, "--frames", help="With --video: haystack frame counts, e.g. '8,64'."),
    fps: float = typer.Option(1.0, "--fps", help="With --video: frames sampled per second (LongVA: 1)."),
    vqgan: str | None = typer.Option(None, "--vqgan", help="With --video: the model's VQGAN (LWM pickle, "
                                                          "diffusers folder, .safetensors, random:tiny)."),
    score: str = typer.Option("generate", "--score", help="With --video: generate, or teacher-forced (LongVA)."),
    rope_theta: RopeThetaOption = None,
    max_sequence_length: MaxSequenceLengthOption = None,
):
    """Needle-in-a-haystack retrieval over a context-length x depth grid (LWM's protocol, or RULER's tasks).
    Without --checkpoint: lwm-tiny up to its trained context (5 lengths x 5 depths, its own haystack).

    Examples:
      lwm needle
      lwm needle --ctx 1M --ctx-min 1000 --n-ctx 20 --n-depth 20 --checkpoint params::lwm-text-1m
                 --config 7b-1m --tokenizer tokenizer.model --haystack pg19.jsonl --mesh 1,1,1,8
      lwm needle --ctx 4K,32K --task multikey_2 --checkpoint hf::LWM-Text-Chat-1M --tokenizer LWM-Text-Chat-1M
      lwm needle --video haystack.mp4 --needle-image needle.png --question "What is the animal?" --answer cat
                 --frames 64,256,1024 --n-depth 5 --checkpoint hf::LWM-Chat-1M --tokenizer LWM-Chat-1M --vqgan vqgan
      lwm needle --plot needle_results.json
    """
    from lwm_core.evals import NeedleSettings, context_lengths, depth_percents, heatmap_png, read_results

    if plot is not None:
        if not plot.is_file():
            raise LWMError(f"--plot {plot} does not exist; pass a results JSON written by lwm needle")
        records = read_results(plot)
        visual = bool(records) and all(r.get("task") == "visual" for r in records)
        png = heatmap_png(records, plot.with_suffix(".png"), title=plot.stem,
                          x_label="Frames" if visual else "Context Length")
        console.print(_summary_line(records, png, plot), highlight=False)
        return
    if video is not None:
        if checkpoint is None or tokenizer is None or vqgan is None:
            raise LWMError("--video needs --checkpoint (a vision-language model), --tokenizer and --vqgan")
        if needle_image is None or question is None or answer is None or frames is None:
            raise LWMError("--video needs --needle-image, --question, --answer and --frames (e.g. '8,64')")
        return run_video(video=video, needle_image=needle_image, question=question, answer=answer, frames=frames,
                         fps=fps, vqgan=vqgan, scoring=score, depths=depth_percents(n_depth, depths),
                         checkpoint=checkpoint, config=config, tokenizer=tokenizer, out=out, mesh=mesh,
                         max_memory=max_memory, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         chunk_size=chunk_size, dtype=dtype, plan_only=plan_only,
                         changes=config_changes(rope_theta, max_sequence_length))
    if checkpoint is None:  # lwm-tiny: its context, a 5 x 5 grid, a haystack from its own world
        from lwm_core.config import resolve_config
        from lwm_core.tiny import tiny_files

        checkpoint, config, tokenizer, _ = default_model(None, config, tokenizer, None)
        if ctx is None:
            ctx = str(resolve_config(config).max_sequence_length)
            ctx_min, n_ctx = ctx_min or "512", n_ctx or 5  # 512: room for the haystack after the 200-token buffer
        n_depth = n_depth or (None if depths else 5)
        haystack = haystack or Path(tiny_files().haystack)
    if ctx is None:
        raise LWMError("pass --ctx, the largest context length (e.g. 128K or 1M) or a list '4K,32K'")
    if tokenizer is None:
        raise LWMError("pass --tokenizer (the model's tokenizer.model): lengths and the haystack are measured in it")
    settings = NeedleSettings(lengths=tuple(context_lengths(ctx, ctx_min, n_ctx)),
                              depths=tuple(depth_percents(n_depth, depths)), rounds=rounds, task=task,
                              needles=needles, retrieve=retrieve, seed=seed, buffer=buffer,
                              max_new_tokens=max_new_tokens, batch_size=batch_size)
    if not out.parent.is_dir():
        raise LWMError(f"cannot write {out}: folder {out.parent} does not exist")
    done = read_results(out)  # a bad file is refused now, not after the run
    run(settings, checkpoint=checkpoint, config=config, tokenizer=tokenizer, haystack=haystack, field=field,
        out=out, done=done, plan_only=plan_only, mesh=mesh, max_memory=max_memory, chunk_size=chunk_size,
        dtype=dtype, changes=config_changes(rope_theta, max_sequence_length))


def _default_budget() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def run(settings, *, checkpoint, config, tokenizer, haystack, field, out: Path, done, plan_only, mesh, max_memory,
        chunk_size, dtype, changes) -> None:
    """Plan (refusing before any model work), then load, run with a live grid, draw, summarise."""
    from lwm_core.evals import load_haystack, plan_needle, run_needle
    from lwm_core.evals.heatmap import heatmap_png
    from lwm_core.evals.ruler import ruler_task
    from lwm_core.evals.runner import record_key
    from lwm_core.infer import Sampler
    from lwm_core.loading import load_model
    from lwm_core.mesh import MESH_AXES
    from lwm_core.text import load_tokenizer

    model_config = _model_config(checkpoint, config, changes, dtype)
    device_mesh = _device_mesh(mesh)
    shape = ",".join(str(device_mesh.shape[a]) for a in MESH_AXES) if device_mesh is not None else "1,1,1,1"
    budget = parse_bytes(max_memory) if max_memory else _default_budget()
    plan = plan_needle(model_config, shape, settings, chunk_size=chunk_size, max_memory=budget)
    keys = {settings.key(*t) for t in settings.trials()}
    finished = sum(record_key(r) in keys for r in done)
    print_plan(plan, plan["trials"] - finished)
    if plan_only:
        return
    if finished == plan["trials"]:  # every trial is in --out already: no model needed
        mine = [r for r in done if record_key(r) in keys]
        png = heatmap_png(mine, out.with_suffix(".png"), title=f"{Path(checkpoint).name} {settings.task}")
        console.print(_summary_line(mine, png, out), highlight=False)
        return
    tok = load_tokenizer(tokenizer)
    if tok.vocab_size > model_config.vocab_size:
        raise LWMError(f"the tokenizer has {tok.vocab_size} pieces but the model only {model_config.vocab_size} "
                       "text ids; pass the model's own tokenizer")
    if settings.task != "lwm" and ruler_task(settings.task).haystack == "essay" and haystack is None:
        err_console.print(f"note: RULER's {settings.task} reads essays (Paul Graham's); without --haystack it uses "
                          "the noise sentences", highlight=False)
    with err_console.status("tokenizing the haystack"):
        hay = load_haystack(tok, haystack, settings.lengths[-1] * settings.rounds, field=field)
    if hay.source == "built-in":
        err_console.print("haystack: built-in (RULER's noise sentences, repeated)", highlight=False)
    elif hay.repeated:
        err_console.print(f"note: {hay.source} is shorter than {settings.lengths[-1] * settings.rounds:,} tokens "
                          f"(the largest length x rounds); its text is repeated {hay.repeats} times", highlight=False)
    with err_console.status("loading the model"):
        model = load_model(checkpoint, config, mesh=device_mesh, dtype=model_config.dtype,
                           rope_theta=changes.get("rope_theta"),
                           max_sequence_length=changes.get("max_sequence_length"))
    sampler = Sampler(model, chunk_size=chunk_size)
    settings = dataclasses.replace(settings, batch_size=plan["batch_size"])  # lowered to fit --max-memory

    info = lambda r: (f"{r['context_length']:,} tokens: prefill {r['prefill_s']:.1f} s, "
                      f"decode {r['decode_s']:.1f} s")
    records = _run_live(settings.lengths, settings.depths, "context length", done, keys, plan["trials"],
                        lambda on_batch: run_needle(sampler, tok, hay, settings, out, on_batch=on_batch), info)
    mine = [r for r in records if record_key(r) in keys]
    png = heatmap_png(mine, out.with_suffix(".png"), title=f"{Path(checkpoint).name} {settings.task}")
    console.print(_summary_line(mine, png, out), highlight=False)


def run_video(*, video: Path, needle_image: Path, question: str, answer: str, frames: str, fps: float, vqgan: str,
              scoring: str, depths, checkpoint, config, tokenizer, out: Path, mesh, max_memory, batch_size,
              max_new_tokens, chunk_size, dtype, plan_only, changes) -> None:
    """LongVA's visual needle: plan (refusing before the model loads), encode the haystack video and
    the needle image once, run the frames x depths grid, draw, summarise."""
    from lwm_core.evals import NeedleSettings, heatmap_png, plan_needle, read_results
    from lwm_core.evals.runner import record_key
    from lwm_core.evals.visual import VisualSettings, run_visual
    from lwm_core.infer import Sampler
    from lwm_core.infer.vision_prompt import check_media, read_media_codes, vision_spec
    from lwm_core.loading import load_model
    from lwm_core.mesh import MESH_AXES
    from lwm_core.text import load_tokenizer
    from lwm_core.text.prompts import lwm_chat_segments
    from lwm_core.vqgan import load_vqgan

    try:
        counts = [int(n) for n in frames.split(",") if n.strip()]
    except ValueError:
        raise LWMError(f"--frames {frames!r} must be whole frame counts, e.g. '8,64,256'") from None
    settings = VisualSettings(tuple(counts), tuple(depths), question, answer, scoring, max_new_tokens, batch_size)
    done = read_results(out)
    available = check_media(video, max_frames=settings.frame_counts[-1], fps=fps)  # no decoding yet
    if available < settings.frame_counts[-1]:
        raise LWMError(f"{video} gives {available} frames at {fps:g} frame(s) a second, fewer than the "
                       f"{settings.frame_counts[-1]} asked; use a longer video, a higher --fps or smaller --frames")
    check_media(needle_image, max_frames=1)
    model_config = _model_config(checkpoint, config, changes, dtype)
    tok = load_tokenizer(tokenizer)
    vq = load_vqgan(vqgan)
    spec = vision_spec(model_config, vq.config)  # a text-only model or a mismatched VQGAN: refused here
    prefix, suffix = lwm_chat_segments(tok, question)
    largest = len(prefix) + len(suffix) + (settings.frame_counts[-1] + 1) * (spec.tokens_per_frame + 1)
    device_mesh = _device_mesh(mesh)
    shape = ",".join(str(device_mesh.shape[a]) for a in MESH_AXES) if device_mesh is not None else "1,1,1,1"
    as_text = NeedleSettings(lengths=(largest + max_new_tokens,), depths=settings.depths, buffer=max_new_tokens,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    plan = plan_needle(model_config, shape, as_text, chunk_size=chunk_size,
                       max_memory=parse_bytes(max_memory) if max_memory else _default_budget())
    keys = {settings.key(*t) for t in settings.trials()}
    finished = sum(record_key(r) in keys for r in done)
    plan["trials"] = len(settings.trials())
    print_plan(plan, plan["trials"] - finished)
    err_console.print(f"frames: {', '.join(map(str, settings.frame_counts))} (+ the needle), "
                      f"{spec.tokens_per_frame + 1} tokens each; largest prompt {largest:,} tokens", highlight=False)
    if plan_only:
        return
    with err_console.status("reading and encoding the haystack video"):
        hay = read_media_codes(video, vq, max_frames=settings.frame_counts[-1], fps=fps).codes
        needle_codes = read_media_codes(needle_image, vq, max_frames=1).codes
    with err_console.status("loading the model"):
        model = load_model(checkpoint, config, mesh=device_mesh, dtype=model_config.dtype,
                           rope_theta=changes.get("rope_theta"),
                           max_sequence_length=changes.get("max_sequence_length"))
    sampler = Sampler(model, chunk_size=chunk_size)
    settings = dataclasses.replace(settings, batch_size=plan["batch_size"])
    records = _run_live(settings.frame_counts, settings.depths, "haystack frames", done, keys, plan["trials"],
                        lambda on_batch: run_visual(sampler, tok, spec, hay, needle_codes, settings, out,
                                                    on_batch=on_batch),
                        lambda r: f"{r['frames']} frames ({r['context_tokens']:,} tokens): {r['time_s']:.1f} s")
    mine = [r for r in records if record_key(r) in keys]
    png = heatmap_png(mine, out.with_suffix(".png"), title=f"{Path(checkpoint).name} visual needle", x_label="Frames")
    console.print(_summary_line(mine, png, out), highlight=False)
