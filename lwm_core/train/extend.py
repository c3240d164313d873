"""Context extension: train a checkpoint through stages of growing length and RoPE theta, each stage
starting from the previous one's weights (LWM's progressive recipe; its code had no such tool, each
stage was a separate run with hand-edited flags).

    stages = parse_schedule("32K:1e6,128K:1e7")          # or "lwm": the paper's text stages
    for row in plan(config, stages, ...): print(row)     # tokens, memory per device, time estimate
    extend_context("runs/text", stages, make_batches, out_dir="runs/long", steps_per_stage=500)
    model = lwm_core.load_model("runs/long")             # the last stage's weights and config

Layout: OUT/stage-1-32768/, OUT/stage-2-131072/, ... (each a full run folder, see
`lwm_core.train.checkpoints`), and OUT/lwm_config.json + OUT/params pointing at the last finished
stage, so OUT itself loads as a checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.train.config import TrainConfig

_SUFFIXES = {"k": 1024, "m": 1024 * 1024}
# The paper's text stages (LWM_FACTS: "Training recipe"): length -> theta.
LWM_SCHEDULE = "32K:1e6,128K:1e7,256K:1e7,512K:2.5e7,1M:5e7"


@dataclasses.dataclass(frozen=True)
class Stage:
    seq_len: int
    rope_theta: float

    @property
    def name(self) -> str:
        return f"{self.seq_len}"


def parse_length(text: str) -> int:
    """'32768', '32K' (32768) or '1M' (1048576)."""
    value = text.strip().lower()
    scale = _SUFFIXES.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit() or int(digits) < 1:
        raise LWMError(f"length {text!r} must be a positive whole number of tokens, optionally with K or M")
    return int(digits) * scale


def parse_schedule(text: str) -> list[Stage]:
    """'LEN:THETA,LEN:THETA,...' (e.g. '32K:1e6,128K:1e7') or 'lwm' -> stages of growing length."""
    spec = LWM_SCHEDULE if text.strip().lower() == "lwm" else text
    stages = []
    for part in spec.split(","):
        length, sep, theta = part.strip().partition(":")
        if not sep:
            raise LWMError(f"schedule entry {part.strip()!r} must be LENGTH:THETA, e.g. 32K:1e6")
        try:
            value = float(theta)
        except ValueError:
            raise LWMError(f"schedule entry {part.strip()!r}: theta {theta!r} is not a number") from None
        if value <= 0:
            raise LWMError(f"schedule entry {part.strip()!r}: theta must be positive")
        stages.append(Stage(parse_length(length), value))
    if any(b.seq_len <= a.seq_len for a, b in zip(stages, stages[1:], strict=False)):
        raise LWMError(f"schedule {text!r}: each stage must be longer than the one before")
    return stages


def plan(config, stages: list[Stage], *, steps_per_stage: int, batch_size: int, mesh: str = "1,1,1,1",
         flops_per_s: float | None = None) -> list[dict]:
    """Per stage: length, theta, tokens, memory per device (weights + AdamW state + gradients + a
    remat activation estimate) and an estimated time from the measured matmul rate (`flops_per_s`: per
    device; default this process's rate over its devices). No training."""
    import jax

    from lwm_core.layout import plan_layout
    from lwm_core.train.flops import matmul_flops_per_s, train_flops_per_token

    rate = flops_per_s or matmul_flops_per_s() / jax.device_count()
    rows = []
    for i, stage in enumerate(stages, 1):
        cfg = config.replace(rope_theta=stage.rope_theta, max_sequence_length=max(stage.seq_len,
                                                                                   config.max_sequence_length))
        layout = plan_layout(cfg, mesh, cache_length=None, batch_size=1)
        sizes = layout["mesh"]
        sp = sizes.get("sp", 1)
        rows_per_device = max(1, batch_size // max(1, sizes.get("dp", 1) * sizes.get("fsdp", 1)))
        # weights, two AdamW moments and the gradients, all sharded like the weights
        state = 4 * layout["param_bytes"]
        # remat: each layer keeps its input; one layer's MLP / attention working set lives at a time
        tokens_local = rows_per_device * stage.seq_len // sp
        activations = tokens_local * 4 * (cfg.num_hidden_layers * cfg.hidden_size + 6 * cfg.intermediate_size)
        tokens = steps_per_stage * batch_size * stage.seq_len
        flops = tokens * train_flops_per_token(cfg, stage.seq_len)  # 6 N + causal attention, lwm_core.train.flops
        rows.append({"stage": i, "seq_len": stage.seq_len, "rope_theta": stage.rope_theta, "steps": steps_per_stage,
                     "tokens": tokens, "memory_per_device_bytes": int(state + activations),
                     "estimated_s": flops / (rate * max(1, layout["devices"]) * 0.5)})
    return rows


def _point_at(out: Path, stage_dir: Path) -> None:
    """Make OUT load as the given stage: OUT/lwm_config.json copied, OUT/params a relative symlink."""
    shutil.copyfile(stage_dir / "lwm_config.json", out / ".lwm_config.json.tmp")
    link = out / ".params.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath((stage_dir / "params").resolve(), out), link)
    os.replace(link, out / "params")
    os.replace(out / ".lwm_config.json.tmp", out / "lwm_config.json")


def extend_context(init: str, stages: list[Stage], batches_for: Callable[[Stage], object], *, out_dir,
                   steps_per_stage: int, train_config: TrainConfig | None = None, config=None, mesh=None,
                   on_stage: Callable[[int, Stage, object], None] | None = None, on_step=None,
                   **run_options) -> list[Path]:
    """Train `init` through `stages`; stage k starts from stage k-1's final weights with the stage's
    rope_theta and max_sequence_length. `batches_for(stage)` gives that stage's batch iterator
    (packed at stage.seq_len). `on_stage(k, stage, model)` is called before stage k trains. Returns
    the stage folders; OUT itself then loads as the last stage."""
    from lwm_core.train.init import initial_model
    from lwm_core.train.trainer import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = train_config or TrainConfig()
    source, folders = init, []
    for k, stage in enumerate(stages, 1):
        folder = out / f"stage-{k}-{stage.seq_len}"
        model = initial_model(source, config if k == 1 else None, mesh=mesh,
                              changes={"rope_theta": stage.rope_theta, "max_sequence_length": stage.seq_len},
                              **run_options)
        if on_stage:
            on_stage(k, stage, model)
        batches = batches_for(stage)
        try:
            train(dataclasses.replace(base, steps=steps_per_stage), model, batches, out_dir=folder, mesh=mesh,
                  on_step=on_step)
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()
        folders.append(folder)
        _point_at(out, folder)
        source = str(folder)
    return folders


def describe(rows: list[dict]) -> list[str]:
    """Printable lines of a `plan`."""
    lines = []
    for r in rows:
        lines.append(f"stage {r['stage']}: {r['seq_len']:,} tokens/row, theta {r['rope_theta']:.3g}, "
                     f"{r['steps']} steps, {r['tokens']:,} tokens, "
                     f"~{r['memory_per_device_bytes'] / 2**30:.2f} GiB/device, "
                     f"~{_duration(r['estimated_s'])}")
    return lines


def _duration(seconds: float) -> str:
    seconds = float(np.round(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
