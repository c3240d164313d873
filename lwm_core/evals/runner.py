"""The needle grid: context lengths x depths x rounds, planned before any model work, run through the
Sampler (the trials of one length batched: one compile per length bucket), results appended to a
JSON list as they come and resumed from it.

    settings = NeedleSettings(lengths=context_lengths("128K", ctx_min="4K", n_ctx=5),
                              depths=depth_percents(n_depth=5), rounds=2)
    plan = plan_needle(model_config, "1,1,1,8", settings, max_memory=40 * 2**30)  # refuses at once
    records = run_needle(Sampler(model), tok, haystack, settings, "needle_results.json")
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.evals.needle import BUFFER, Haystack, Trial, lwm_trial, score
from lwm_core.evals.ruler import TASKS, ruler_trial, ruler_task, string_match_all
from lwm_core.fileio import atomic_path

TIMING_FIELDS = ("prefill_s", "decode_s", "time_s")  # the only record fields that differ between identical runs
_SUFFIXES = {"k": 1 << 10, "m": 1 << 20}


def parse_length(text: str | int) -> int:
    """'1M' -> 1048576, '128K' -> 131072, '3000' -> 3000 (K and M are powers of two, as LWM's 1M)."""
    value = str(text).strip().lower()
    scale = _SUFFIXES.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit() or int(digits) < 1:
        raise LWMError(f"context length {text!r} must be a positive number of tokens, optionally with K or M "
                       "(128K = 131072, 1M = 1048576)")
    return int(digits) * scale


def context_lengths(ctx: str, ctx_min: str | None = None, n_ctx: int | None = None) -> list[int]:
    """The grid's lengths: an explicit list '4K,32K,128K', or `ctx` (the largest) alone, or LWM's
    `round(linspace(ctx_min, ctx, n_ctx))` (ctx_min default 1000, LWM's)."""
    if "," in ctx:
        if ctx_min is not None or n_ctx is not None:
            raise LWMError("--ctx as a list ('4K,32K') takes no --ctx-min / --n-ctx; give one or the other")
        return sorted({parse_length(p) for p in ctx.split(",") if p.strip()})
    top = parse_length(ctx)
    if n_ctx is None or n_ctx == 1:
        if ctx_min is not None:
            raise LWMError("--ctx-min needs --n-ctx (how many lengths from --ctx-min to --ctx)")
        return [top]
    if n_ctx < 1:
        raise LWMError(f"--n-ctx must be at least 1, got {n_ctx}")
    low = parse_length(ctx_min) if ctx_min is not None else 1000
    if low > top:
        raise LWMError(f"--ctx-min {low} is above --ctx {top}")
    return sorted({int(v) for v in np.round(np.linspace(low, top, n_ctx))})


def depth_percents(n_depth: int | None = None, depths: str | None = None) -> list[float]:
    """LWM's `round(linspace(0, 100, n_depth))`, or an explicit list '0,50,100'."""
    if depths is not None:
        try:
            values = sorted({float(d) for d in depths.split(",") if d.strip()})
        except ValueError:
            raise LWMError(f"--depths {depths!r} must be numbers from 0 to 100, e.g. '0,25,50,75,100'") from None
        if not values or values[0] < 0 or values[-1] > 100:
            raise LWMError(f"--depths {depths!r} must be numbers from 0 to 100, e.g. '0,25,50,75,100'")
        return values
    n = 10 if n_depth is None else n_depth
    if n < 1:
        raise LWMError(f"--n-depth must be at least 1, got {n}")
    return sorted({float(v) for v in np.round(np.linspace(0, 100, n))}) if n > 1 else [50.0]


@dataclasses.dataclass(frozen=True)
class NeedleSettings:
    """What one needle run asks. `task`: 'lwm' (LWM's needle, `needles`/`retrieve`) or a RULER task."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    rounds: int = 1
    task: str = "lwm"
    needles: int = 1
    retrieve: int = 1
    seed: int = 1234
    buffer: int = BUFFER
    max_new_tokens: int = 32
    batch_size: int = 4

    def __post_init__(self):
        object.__setattr__(self, "lengths", tuple(sorted(int(n) for n in self.lengths)))
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        if self.task != "lwm":
            ruler_task(self.task)  # raises for an unknown name
            if self.needles != 1 or self.retrieve != 1:
                raise LWMError("--needles / --retrieve are for LWM's needle (--task lwm); RULER's tasks fix theirs")
        if not self.lengths or not self.depths:
            raise LWMError("the grid needs at least one context length and one depth")
        for name in ("rounds", "needles", "retrieve", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise LWMError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.retrieve > self.needles:
            raise LWMError(f"--retrieve {self.retrieve} is more than --needles {self.needles}")
        if self.max_new_tokens > self.buffer:
            raise LWMError(f"--max-new-tokens {self.max_new_tokens} must fit in the --buffer of {self.buffer} "
                           "tokens kept free after the prompt; raise --buffer")
        if self.lengths[0] <= self.buffer:
            raise LWMError(f"context length {self.lengths[0]} leaves nothing after the --buffer of {self.buffer} "
                           "tokens; ask for longer contexts or a smaller --buffer")

    def trials(self) -> list[tuple[int, float, int]]:
        """(context length, depth, round) in run order: by length, then depth, then round."""
        return [(n, d, r) for n in self.lengths for d in self.depths for r in range(self.rounds)]

    def key(self, length: int, depth: float, round_index: int) -> tuple:
        return (self.task, self.needles, self.retrieve, self.seed, int(length), float(depth), int(round_index))


def record_key(record: dict) -> tuple:
    return (record.get("task", "lwm"), record.get("needles", 1), record.get("retrieve", 1), record.get("seed"),
            int(record["context_length"]), float(record["depth_percent"]), int(record["round"]))


def read_results(path) -> list[dict]:
    """The records of a results file (a JSON list); [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except ValueError:
        records = None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "context_length" in r for r in records):
        raise LWMError(f"{path} is not a needle results file (a JSON list of trials); pass another --out "
                       "or move it away")
    return records


def write_results(path, records: list[dict]) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(records, indent=1))


# ------------------------------------------------------------------------------------ the plan
def _sampler_plan(config, mesh, chunk_size: int, prompt_length: int, max_new_tokens: int):
    """What `Sampler.plan` gives on a model of `config` on `mesh` (an AbstractMesh will do), without a
    model: the same code, so the plan's cache is the one the run allocates."""
    from lwm_core.infer.sampler import Sampler

    probe = SimpleNamespace(config=config, chunk_size=chunk_size, prompt_bucket_min=16, mesh=mesh)
    return Sampler.plan(probe, prompt_length, max_new_tokens)


def plan_needle(config, mesh_shape: str, settings: NeedleSettings, *, chunk_size: int = 2048,
                max_memory: int | None = None, flops_per_s: float | None = None) -> dict:
    """The run before it runs: cells, trials, the largest prefill and its KV cache, memory per device
    (`plan_layout`: weights + the batch's cache, plus one prefill chunk of activations) and an
    estimated time. Refuses (LWMError) a length beyond the model's max_sequence_length, or memory
    beyond `max_memory` bytes per device even at batch 1; a larger batch that does not fit is
    lowered. Reads no weights."""
    from lwm_core.layout import plan_layout, planning_mesh
    from lwm_core.mesh import axis_size, seq_axis
    from lwm_core.train.flops import matmul_params

    top = settings.lengths[-1]
    if top > config.max_sequence_length:
        raise LWMError(f"context length {top:,} exceeds the model's max_sequence_length "
                       f"{config.max_sequence_length:,}; lower --ctx (--frames with --video) or extend the model's "
                       "context first")
    mesh = planning_mesh(mesh_shape)
    sp = axis_size(mesh, seq_axis())
    padded, chunk, cache = _sampler_plan(config, mesh, chunk_size, top - settings.buffer, settings.max_new_tokens)
    itemsize = np.dtype(config.dtype).itemsize if config.dtype != "bfloat16" else 2
    batch = min(settings.batch_size, len(settings.depths) * settings.rounds)
    while True:
        layout = plan_layout(config, mesh_shape, cache_length=cache, batch_size=batch)
        rows = max(1, batch // max(1, layout["mesh"]["dp"] * layout["mesh"]["fsdp"]))
        # one chunk through a layer: hidden states, q/k/v/o and the MLP's two wide activations
        activations = rows * (chunk // sp) * (6 * config.hidden_size + 3 * config.intermediate_size) * itemsize
        memory = layout["total_bytes_per_device"] + activations
        if max_memory is None or memory <= max_memory or batch == 1:
            break
        batch = max(1, batch // 2)
    if max_memory is not None and memory > max_memory:
        raise LWMError(f"the {top:,}-token cell needs {memory / 2**30:,.2f} GiB per device "
                       f"(weights {layout['param_bytes_per_device'] / 2**30:,.2f} GiB + KV cache "
                       f"{layout['cache']['bytes_per_device'] / 2**30:,.2f} GiB) over the --max-memory "
                       f"{max_memory / 2**30:,.2f} GiB; use more devices on sp or fsdp (--mesh) or lower --ctx")
    matmul, attn = matmul_params(config), config.num_hidden_layers * config.hidden_size
    flops = 0.0
    for n in settings.lengths:  # forward: 2 N per token + causal attention 2 L D T^2; decode reads the cache
        t = n - settings.buffer
        flops += len(settings.depths) * settings.rounds * (
            2 * matmul * t + 2 * attn * t * t + settings.max_new_tokens * (2 * matmul + 4 * attn * t))
    if flops_per_s is None:
        from lwm_core.train.flops import matmul_flops_per_s

        flops_per_s = matmul_flops_per_s(config.dtype)
    return {"cells": len(settings.lengths) * len(settings.depths), "trials": len(settings.trials()),
            "lengths": list(settings.lengths), "depths": list(settings.depths), "rounds": settings.rounds,
            "largest_length": top, "largest_prefill": padded, "chunk_size": chunk, "cache_length": cache,
            "batch_size": batch, "mesh": layout["mesh"], "memory_per_device": int(memory),
            "weights_per_device": layout["param_bytes_per_device"],
            "cache_per_device": layout["cache"]["bytes_per_device"], "max_memory": max_memory,
            "flops": flops, "flops_per_s": flops_per_s, "estimated_s": flops / (0.5 * flops_per_s)}


# ------------------------------------------------------------------------------------ the run
def build_trial(settings: NeedleSettings, tokenizer, haystack: Haystack, length: int, depth: float,
                round_index: int) -> Trial:
    if settings.task == "lwm":
        return lwm_trial(tokenizer, haystack, context_length=length, depth_percent=depth, round_index=round_index,
                         seed=settings.seed, needles=settings.needles, retrieve=settings.retrieve,
                         buffer=settings.buffer)
    return ruler_trial(settings.task, tokenizer, haystack, context_length=length, depth_percent=depth,
                       round_index=round_index, seed=settings.seed, buffer=settings.buffer)


def _record(settings, length, depth, round_index, trial: Trial, response: str, timings: dict) -> dict:
    if settings.task == "lwm":
        value = score(trial.answers, response)
        correct = bool(value) if len(trial.answers) == 1 else value  # LWM's record holds a bool
    else:
        correct = string_match_all(trial.answers, response)
    answer = trial.answers[0] if len(trial.answers) == 1 else list(trial.answers)
    return {"task": settings.task, "context_length": int(length), "context_tokens": len(trial.ids),
            "depth_percent": float(depth), "round": int(round_index), "seed": settings.seed,
            "needles": settings.needles, "retrieve": settings.retrieve,
            "needle_positions": list(trial.needle_positions), "keys": list(trial.keys), "question": trial.question,
            "answer": answer, "response": response, "correct": correct, **timings}


def run_needle(sampler, tokenizer, haystack: Haystack, settings: NeedleSettings, out_path, *,
               on_batch: Callable[[list[dict], int, int], None] | None = None) -> list[dict]:
    """Run every trial of `settings` not already in `out_path` (a JSON list, rewritten atomically after
    each batch, so an interrupted run keeps what finished and a rerun resumes). Trials of one length
    go through `sampler.generate` (greedy) `settings.batch_size` at a time; a short last batch is
    padded with copies so every batch of a length has one shape. `on_batch(new_records, done,
    total)` follows each batch. Returns all records of the file."""
    from lwm_core.infer import SamplingSettings

    records = read_results(out_path)
    finished = {record_key(r) for r in records}
    pending = [t for t in settings.trials() if settings.key(*t) not in finished]
    total, done = len(settings.trials()), len(settings.trials()) - len(pending)
    batches = []
    for length in settings.lengths:
        mine = [t for t in pending if t[0] == length]
        batches += [mine[i:i + settings.batch_size] for i in range(0, len(mine), settings.batch_size)]
    for batch in batches:
        trials = [build_trial(settings, tokenizer, haystack, *t) for t in batch]
        prompts = [tr.ids for tr in trials]
        prompts += [prompts[0]] * (settings.batch_size - len(prompts))  # one shape per length: one compile
        marks: list[float] = []
        start = time.perf_counter()
        out = sampler.generate(prompts, max_new_tokens=settings.max_new_tokens, settings=SamplingSettings(),
                               eos_token_id=tokenizer.eos_id,
                               on_token=lambda i, _, marks=marks: marks.append(time.perf_counter()) if i == 0 else None)
        end = time.perf_counter()
        first = marks[0] if marks else end
        timings = {"prefill_s": round(first - start, 4), "decode_s": round(end - first, 4)}
        new = []
        for row, (t, trial) in enumerate(zip(batch, trials, strict=True)):
            ids = out.tokens[row, :out.lengths[row]]
            if len(ids) and ids[-1] == tokenizer.eos_id:
                ids = ids[:-1]
            text = tokenizer.decode_generated(ids)
            new.append(_record(settings, *t, trial, text, timings))
        records += new
        write_results(out_path, records)
        done += len(new)
        if on_batch:
            on_batch(new, done, total)
    return records


def summary(records: list[dict]) -> dict:
    """Mean score (0..1; RULER reports it x100) overall and per context length."""
    if not records:
        return {"trials": 0, "mean": math.nan, "per_length": {}}
    per: dict[int, list[float]] = {}
    for r in records:
        per.setdefault(int(r["context_length"]), []).append(float(r["correct"]))
    scores = [float(r["correct"]) for r in records]
    return {"trials": len(records), "mean": sum(scores) / len(scores),
            "per_length": {n: sum(v) / len(v) for n, v in sorted(per.items())}}


__all__ = ["NeedleSettings", "TASKS", "TIMING_FIELDS", "context_lengths", "depth_percents", "parse_length",
           "plan_needle", "read_results", "run_needle", "summary"]
