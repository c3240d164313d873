"""`lwm train --stage vqgan` and `--stage tokenizer`: the two tokenizers a model is trained on top of."""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from lwm_cli.common import console, err_console, parse_vqgan_config
from lwm_core.errors import LWMError


def train_vqgan_stage(data: list[str], out: Path, *, vqgan_config: str | None, init: str | None, steps: int,
                      batch_size: int, lr: float | None, warmup: int, seed: int, log_every: int,
                      save_every: int, max_frames: int | None, foreground_weight: float = 1.0) -> None:
    from lwm_core.vqgan.pipeline import expand_inputs
    from lwm_core.vqgan.train import VQGANTrainConfig, train_vqgan

    if out.suffix not in (".safetensors", ".pkl", ".pickle") and out.exists() and not out.is_dir():
        raise LWMError(f"--out {out}: name a .safetensors (ours), .pkl (LWM's) file or a diffusers folder")
    if init is None and vqgan_config is None:
        raise LWMError("pass --vqgan-config (a preset such as lwm-tiny, or a VQGANConfig JSON) to train a VQGAN "
                       "from scratch, or --init VQGAN to fine-tune one")
    config = VQGANTrainConfig(learning_rate=lr or 1e-3, warmup_steps=warmup, seed=seed,
                              foreground_weight=foreground_weight)
    preset = parse_vqgan_config(vqgan_config)
    expand_inputs(data)  # missing inputs fail in one line before any progress bar
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeRemainingColumn(), console=err_console) as bar:
        reading = bar.add_task("reading frames", total=None, info="")
        training = bar.add_task("vqgan step", total=steps, info="compiling", visible=False)

        def on_read(done, total):
            bar.update(reading, completed=done, total=total, info=f"{done}/{total} files")

        def on_step(step, m):
            bar.update(training, visible=True, completed=step, info=(
                f"loss {m['loss']:.4f}  l1 {m['l1']:.4f}  codes {m['codes_used']:.0f}  ppl {m['perplexity']:.0f}"))

        result = train_vqgan(data, out, vqgan_config=preset, init=init, config=config, steps=steps,
                             batch_size=batch_size, log_every=log_every, save_every=save_every,
                             max_frames_per_clip=max_frames, on_read=on_read, on_step=on_step)
    console.print(f"VQGAN trained on {result['train_frames']} frames for {steps} steps in {result['wall_s']:.0f} s: "
                  f"{out} (metrics: {out.name}.metrics.jsonl)")
    if "held_out_pixel_accuracy" in result:
        console.print(f"held-out {result['held_out_frames']} frames: round-trip pixel accuracy "
                      f"{result['held_out_pixel_accuracy']:.1%}, l1 {result['held_out_l1']:.4f}, "
                      f"{result['held_out_codes_used']:.0f} codes used")
    summary = out.with_name(out.name + ".summary.json")
    summary.write_text(json.dumps(result, indent=1) + "\n")


def train_tokenizer_stage(data: list[str], out: Path, *, vocab_size: int) -> None:
    from lwm_core.text.train_tokenizer import train_tokenizer

    with err_console.status(f"training a {vocab_size}-piece SentencePiece tokenizer"):
        result = train_tokenizer(data, out, vocab_size=vocab_size)
    console.print(f"tokenizer of {vocab_size} pieces trained on {result['lines']} lines: {out}")
