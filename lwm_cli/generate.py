"""`lwm generate`: text to an image or a video through VQGAN tokens, as LWM's vision_generation.py."""

from __future__ import annotations

import dataclasses
import json
import time

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lwm_cli.common import console, default_model, err_console, fail, handle_errors, parse_vqgan_config
from lwm_cli.convert import SPEC_HELP, progress_bar
from lwm_core.config import RANDOM_PREFIX

_HELP = """Generate an image or a video from a text prompt, as LWM does: frame 1 is an image (LWM's image prompt, --cfg and --top-k against the unconditional prompt <s><vision>), later frames follow it in one more call on LWM's video prompt (--cfg-video, --top-k-video), each sampled with every earlier frame in context. The VQGAN turns the codes into pixels.

Example: lwm generate "fireworks over a city" --out fire.png --checkpoint params::lwm-chat/params --config 7b-1m --tokenizer tokenizer.model --vqgan vqgan.pkl

Example: lwm generate "a dog running on a beach" --frames 8 --out dog.mp4 --n 2 --save-tokens dog.npz ...  (writes dog_0.mp4, dog_1.mp4 and dog_0.npz, dog_1.npz)

--save-tokens writes the codes as `lwm tokenize-video` token files (codes \\[frames, h, w]); `lwm tokenize-video --decode dog_0.npz --out again.mp4 --vqgan vqgan.pkl` turns them back into frames. The context (prompt + every frame's codes and end-of-frame id) and its estimated memory per device are stated before sampling, and refused when the context exceeds the model's max_sequence_length or the memory --max-memory (e.g. --max-memory 24GiB; guided rows count twice).
"""  # noqa: E501 (typer keeps line breaks, so paragraphs are one line)


@handle_errors
def generate(
    prompt: str | None = typer.Argument(None, help="What to generate, e.g. \"fireworks over a city\"."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output file: .png (one image), .gif or .mp4."),
    frames: int = typer.Option(1, "--frames", help="Frames to generate (1 = an image)."),
    cfg: float = typer.Option(5.0, "--cfg", help="Guidance scale of an image / a video's first frame (LWM 5.0)."),
    top_k: int = typer.Option(8192, "--top-k", help="Top-k of an image / a video's first frame (LWM 8192)."),
    cfg_video: float = typer.Option(1.0, "--cfg-video", help="Guidance scale of a video's later frames (LWM "
                                    "1.0; 1 runs no unconditional rows)."),
    top_k_video: int = typer.Option(1000, "--top-k-video", help="Top-k of a video's later frames (LWM 1000)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature of all frames (0 = greedy)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed and settings give the same frames."),
    samples: int = typer.Option(1, "--n", help="Samples of the prompt, generated side by side (numbered outputs)."),
    save_tokens: str | None = typer.Option(None, "--save-tokens", help="Also write the codes as token files "
                                           "(.npz, lwm tokenize-video's format)."),
    fps: float = typer.Option(4.0, "--fps", help="Frame rate of a written video (LWM 4)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (prompt ids, files, timings)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help=f"Vision-language checkpoint: {SPEC_HELP}."),
    config: str | None = typer.Option(None, "--config", help="Model preset (e.g. 7b-1m) or ModelConfig JSON."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="LLaMA tokenizer.model or a HF folder."),
    vqgan: str | None = typer.Option(None, "--vqgan", help="VQGAN weights (LWM .pkl, diffusers folder, "
                                     ".safetensors), or random:tiny / random:full (untrained)."),
    vqgan_config: str | None = typer.Option(None, "--vqgan-config", help="VQGAN preset or JSON, for weights "
                                            "that carry no config (default LWM's)."),
    mesh: str | None = typer.Option(None, "--mesh", metavar="DP,FSDP,TP,SP", help="Device mesh, e.g. 1,-1,1,1."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Refuse a run estimated above this per "
                                                                    "device (weights, KV cache), e.g. 24GiB."),
):
    from lwm_core.infer.ask import parse_memory
    from lwm_core.infer.generate import (
        GenerationSettings, format_bytes, generate_vision, output_paths, plan_generation, plan_memory,
        write_generation,
    )

    if not prompt:
        fail('give a prompt, e.g. lwm generate "fireworks over a city" --out fire.png --checkpoint ...')
    if not out:
        fail("--out is required: a .png for one image, a .gif or .mp4 for frames")
    settings = GenerationSettings(frames=frames, samples=samples, cfg=cfg, top_k=top_k, cfg_video=cfg_video,
                                  top_k_video=top_k_video, temperature=temperature, seed=seed)
    if fps <= 0:
        fail(f"--fps must be positive, got {fps}")
    output_paths(out, settings, save_tokens)  # a bad --out fails here, before anything is loaded
    budget = parse_memory(max_memory) if max_memory else None
    checkpoint, config, tokenizer, vqgan = default_model(checkpoint or None, config, tokenizer, vqgan)
    if not tokenizer:
        fail("--tokenizer is required (LLaMA's tokenizer.model, or a Hugging Face folder holding it)")
    if not vqgan:
        fail("--vqgan is required (a LWM .pkl, a diffusers folder, a .safetensors, or random:tiny)")

    from lwm_core.infer import Sampler
    from lwm_core.loading import generation_options, load_model
    from lwm_core.mesh import make_mesh
    from lwm_core.text import load_tokenizer
    from lwm_core.vqgan import load_vqgan

    started = time.perf_counter()
    tok = load_tokenizer(tokenizer)
    vq = load_vqgan(vqgan, parse_vqgan_config(vqgan_config))
    for spec, what in ((vqgan, "VQGAN"), (checkpoint, "model")):
        if spec.startswith(RANDOM_PREFIX):
            err_console.print(f"[yellow]warning:[/] {spec} is an UNTRAINED random {what}: its frames are "
                              "noise, for trying the plumbing only", highlight=False, soft_wrap=True)
    with progress_bar(f"loading {checkpoint}") as progress:
        model = load_model(checkpoint, config, mesh=make_mesh(mesh) if mesh else None, progress=progress,
                           **generation_options())
    plan = plan_generation(model.config, tok, prompt, vq.config, settings)
    loaded = time.perf_counter()
    err_console.print(f"context {plan.context_tokens:,} tokens of {model.config.max_sequence_length:,}: a "
                      f"{len(plan.video_prompt_ids or plan.image_prompt_ids)}-token prompt + {frames} frame(s) x "
                      f"{plan.frame_length} ({plan.spec.grid[0]}x{plan.spec.grid[1]} codes + end of frame)"
                      f"{f', {samples} samples' if samples > 1 else ''}", highlight=False, soft_wrap=True)
    sampler = Sampler(model)
    memory = plan_memory(plan, sampler, budget)  # over --max-memory: one line, before any prefill
    of = f" of --max-memory {format_bytes(budget)}" if budget else ""
    err_console.print(f"memory ~{format_bytes(memory)} per device{of} (weights, KV cache, one prefill chunk)",
                      highlight=False, soft_wrap=True)

    columns = (TextColumn("frames"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task("generate", total=frames, rate="compiling + prefill")

        def on_progress(frames_done: int, tokens_done: int) -> None:
            rate = tokens_done * samples / max(time.perf_counter() - loaded, 1e-9)
            bar.update(task, completed=frames_done, rate=f"{rate:,.1f} tok/s")

        result = generate_vision(plan, sampler, on_progress=on_progress)
    sampled = time.perf_counter()
    with err_console.status("decoding frames with the VQGAN"):
        files, token_files = write_generation(result, vq, out, tokens_out=save_tokens, fps=fps)
    timings = {"load": loaded - started, **result.timings, "decode_and_write": time.perf_counter() - sampled}

    if as_json:
        report = {
            "prompt": prompt, "prompt_ids": list(plan.image_prompt_ids),
            "video_prompt_ids": None if plan.video_prompt_ids is None else list(plan.video_prompt_ids),
            "uncond_prompt_ids": list(plan.uncond_prompt_ids), "frames": frames, "samples": samples,
            "tokens_per_frame": plan.frame_length, "context_tokens": plan.context_tokens,
            "memory_per_device": memory,
            "vision_ids": result.vision_ids.tolist(), "files": [str(f) for f in files],
            "token_files": [str(f) for f in token_files], "settings": dataclasses.asdict(settings),
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }
        typer.echo(json.dumps(report))
        return
    wrote = ", ".join(str(f) for f in files + token_files)
    console.print(f"wrote {wrote} ({frames} frame(s) each) in {sum(timings.values()):.1f}s", highlight=False,
                  soft_wrap=True)


generate.__doc__ = _HELP  # typer shows the docstring as --help
