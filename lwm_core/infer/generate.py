"""Text to image and video as LWM's `vision_generation.py` does it, on the Sampler.

    plan = plan_generation(model.config, tokenizer, "fireworks over a city", vqgan.config,
                           GenerationSettings(frames=8))
    sampler = Sampler(model)
    plan_memory(plan, sampler, max_memory=24 * 2**30)     # estimated bytes per device; refuses over the budget
    result = generate_vision(plan, sampler)               # result.codes [samples, frames, h, w]
    files, token_files = write_generation(result, vqgan, "fire.mp4", tokens_out="fire.npz")

LWM's recipe (shared/LWM_FACTS.md "Image and video generation"):
- frame 1 is an image: the prompt `<s>... USER: Generate an image of {prompt} ASSISTANT: <vision>`
  against the unconditional `<s><vision>`, image cfg / top-k;
- later frames: one more call on `<s>... Generate a video of {prompt} ASSISTANT: <vision>` + frame 1
  (and `<s><vision>` + frame 1), video cfg / top-k; each frame is sampled with every earlier frame
  in the context, fed back as vision tokens;
- logits = uncond + scale * (cond - uncond) on the vision head, then temperature, top-k, sampling;
  the end-of-frame id is forced after every frame (the last one too). Frames become pixels through
  the VQGAN and `((x + 1) * 127.5).astype(uint8)` (LWM truncates), videos at 4 fps.

Not copied from LWM: vision sampling never stops early (LWM compared sampled codes with the text eos
id 2), only VQGAN codes (< the codebook size) are ever sampled at a code position (so every frame
decodes), the frame geometry and end-of-frame id come from the VQGAN's config (`VisionSpec`), and a
guidance scale of exactly 1 runs no unconditional rows (uncond + 1 * (cond - uncond) is cond; the
tests check it samples the same tokens as LWM's two-row computation).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lwm_core.config import ModelConfig
from lwm_core.data.vision import VisionSpec
from lwm_core.errors import LWMError
from lwm_core.infer import processors as lp
from lwm_core.infer.ask import estimate_memory
from lwm_core.infer.sampler import ForcedTokens, Sampler, SamplingSettings
from lwm_core.text.prompts import lwm_generation_prompt_ids, lwm_unconditional_prompt_ids
from lwm_core.infer.vision_prompt import vision_spec

FPS = 4.0  # LWM writes videos at 4 frames per second
SUFFIXES = (".png", ".gif", ".mp4")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """What `lwm generate` samples. `cfg`/`top_k`: an image and a video's first frame (LWM: 5.0, 8192);
    `cfg_video`/`top_k_video`: a video's later frames (LWM: 1.0, 1000); `temperature` all frames
    (0 = greedy); `samples` rows generated side by side; `top_k` None = no top-k."""

    frames: int = 1
    samples: int = 1
    cfg: float = 5.0
    top_k: int | None = 8192
    cfg_video: float = 1.0
    top_k_video: int | None = 1000
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("frames", "samples"):
            if getattr(self, name) < 1:
                raise LWMError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cfg", "cfg_video", "temperature"):
            if getattr(self, name) < 0:
                raise LWMError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("top_k", "top_k_video"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LWMError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise LWMError(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """Everything `generate_vision` runs, checked against the model: build it with `plan_generation`."""

    prompt: str
    settings: GenerationSettings
    spec: VisionSpec
    image_prompt_ids: tuple[int, ...]  # frame 1 (an image)
    video_prompt_ids: tuple[int, ...] | None  # later frames; None for one frame
    uncond_prompt_ids: tuple[int, ...]  # LWM's `<s><vision>`
    context_tokens: int  # the longest row: a prompt + every vision id after it

    @property
    def frame_length(self) -> int:
        """Vision ids per frame: its codes and the end-of-frame id (257 for LWM's VQGAN)."""
        return self.spec.tokens_per_frame + 1


@dataclasses.dataclass
class VisionGeneration:
    """What `generate_vision` returns."""

    plan: GenerationPlan
    vision_ids: np.ndarray  # [samples, frames * frame_length] int32: codes then eof, frame by frame
    codes: np.ndarray  # [samples, frames, h, w] int32
    timings: dict[str, float]  # seconds: first_frame, later_frames (compilation included)


@dataclasses.dataclass(frozen=True)
class CodeSampling(SamplingSettings):
    """SamplingSettings that only pick VQGAN codes (ids < `num_codes`): the vision head also scores the
    end-of-frame ids and unused rows, which no VQGAN can decode. The mask comes before top-k, so
    top-k ranks codes only. (A frozen dataclass: it keys the Sampler's compiled functions.)"""

    num_codes: int = 8192

    def processor(self) -> lp.Processor:
        n = self.num_codes

        def only_codes(logits):  # [B, V] -> [B, V], -inf beyond the codebook
            return jnp.where(jnp.arange(logits.shape[-1]) < n, logits, -jnp.inf)

        if self.greedy:  # argmax is the same after temperature, top-k or top-p: skip their work
            return only_codes
        return lp.compose(only_codes, super().processor())


def plan_generation(model_config: ModelConfig, tokenizer, prompt: str, vqgan_config,
                    settings: GenerationSettings = GenerationSettings()) -> GenerationPlan:
    """LWM's prompts for `prompt` and the context they need, checked before anything runs: a text-only
    model, a VQGAN that does not fit the vision vocabulary, a tokenizer larger than the text
    vocabulary, or a context over max_sequence_length is one LWMError line."""
    spec = vision_spec(model_config, vqgan_config, task="generate")
    if not prompt.strip():
        raise LWMError('the prompt is empty; say what to generate, e.g. "fireworks over a city"')
    if tokenizer.vocab_size > model_config.vocab_size:
        raise LWMError(f"the tokenizer has {tokenizer.vocab_size} pieces but the model only "
                       f"{model_config.vocab_size} text ids; pick the tokenizer that matches the checkpoint")
    image = tuple(lwm_generation_prompt_ids(tokenizer, prompt, video=False))
    video = tuple(lwm_generation_prompt_ids(tokenizer, prompt, video=True)) if settings.frames > 1 else None
    uncond = tuple(lwm_unconditional_prompt_ids(tokenizer))
    step = spec.tokens_per_frame + 1
    # the conditional rows are the longest: frame 1 after the image prompt, all frames after the video one
    context = max(len(image) + step, len(video) + settings.frames * step if video else 0)
    limit = model_config.max_sequence_length
    if context > limit:
        fit = (limit - len(video or image)) // step
        hint = f"ask for at most {fit} frames" if fit >= 1 else "use a shorter prompt or a longer-context model"
        raise LWMError(f"{settings.frames} frame(s) of {step} tokens after a {len(video or image)}-token prompt "
                       f"need a context of {context} tokens, over the model's max_sequence_length {limit}; "
                       f"{hint}")
    return GenerationPlan(prompt, settings, spec, image, video, uncond, context)


def _calls(plan: GenerationPlan) -> list[tuple[int, int, int]]:
    """(rows, prompt length, new tokens) of each sampler call: frame 1, then the later frames. A guided
    call (scale != 1) also runs one unconditional row per sample."""
    s, step = plan.settings, plan.frame_length
    calls = [(s.samples * (2 if s.cfg != 1.0 else 1), len(plan.image_prompt_ids), step)]
    if plan.video_prompt_ids is not None:
        calls.append((s.samples * (2 if s.cfg_video != 1.0 else 1), len(plan.video_prompt_ids) + step,
                      (s.frames - 1) * step))
    return calls


def format_bytes(n: int) -> str:
    """Bytes for a message: GiB from 1 GiB up, else MiB (a tiny test budget is not '0.00 GiB')."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def plan_memory(plan: GenerationPlan, sampler: Sampler, max_memory: int | None = None) -> int:
    """Estimated peak bytes per device of the plan's sampler calls (`lwm_core.infer.ask.estimate_memory`:
    weights and KV cache as laid out on the model's mesh, plus one prefill chunk's activations). Each
    call's cache is dropped before the next, so the peak is the larger call. Raises one LWMError line
    when it exceeds `max_memory` (or a cache plan does not fit the model), before anything is sampled."""
    peak, worst = 0, None
    for rows, prompt, new in _calls(plan):
        _, chunk, cache = sampler.plan(prompt, new)
        memory = estimate_memory(sampler.config, rows, cache, chunk, sampler.mesh)
        if memory > peak:
            peak, worst = memory, (rows, prompt + new, cache)
    if max_memory is not None and peak > max_memory:
        rows, tokens, cache = worst
        raise LWMError(f"a context of {tokens} tokens x {rows} rows ({plan.settings.samples} sample(s), guided rows "
                       f"doubled) needs about {format_bytes(peak)} per device (weights, KV cache of {cache} slots, "
                       f"activations), over --max-memory {format_bytes(max_memory)}; use fewer --frames, a "
                       "smaller --n or a mesh with more devices")
    return peak


def call_seed(seed: int, call: int) -> int:
    """A seed per sampler call (frame 1, later frames), independent streams for each --seed."""
    return int(np.random.SeedSequence([seed, call]).generate_state(1)[0]) % 2**31


def _sample(sampler: Sampler, plan: GenerationPlan, prompts, vision_masks, uncond, uncond_masks, *, cfg: float,
            top_k: int | None, new: int, seed: int, on_token) -> np.ndarray:
    settings = CodeSampling(temperature=plan.settings.temperature, top_k=top_k, num_codes=plan.spec.num_codes)
    guided = cfg != 1.0  # scale 1: uncond + (cond - uncond) is cond, so the uncond rows are skipped
    out = sampler.generate(
        prompts, vision_masks=vision_masks, max_new_tokens=new, head="vision", settings=settings,
        cfg_scale=cfg if guided else None, uncond_prompts=uncond if guided else None,
        uncond_vision_masks=uncond_masks if guided else None,
        forced=ForcedTokens.every(plan.frame_length, plan.spec.eof_id), seed=seed, on_token=on_token)
    return out.tokens  # [samples, new]


def generate_vision(plan: GenerationPlan, sampler: Sampler, *,
                    on_progress: Callable[[int, int], None] | None = None) -> VisionGeneration:
    """Sample the plan's frames for each of its samples. `on_progress(frames_done, tokens_done)` is
    called after every generated position (all samples advance together)."""
    s, step = plan.settings, plan.frame_length
    n, frames = s.samples, s.frames
    for _, prompt, new in _calls(plan):  # both calls' cache plans before frame 1 (raises when one does not fit)
        sampler.plan(prompt, new)

    done = [0]

    def on_token(i: int, _tokens) -> None:
        done[0] += 1
        if on_progress:
            on_progress(done[0] // step, done[0])

    started = time.perf_counter()
    first = _sample(sampler, plan, [list(plan.image_prompt_ids)] * n, None, [list(plan.uncond_prompt_ids)], None,
                    cfg=s.cfg, top_k=s.top_k, new=step, seed=call_seed(s.seed, 0), on_token=on_token)
    timings = {"first_frame": time.perf_counter() - started, "later_frames": 0.0}
    parts = [first]  # [n, step] each
    if frames > 1:
        started = time.perf_counter()
        video, uncond = list(plan.video_prompt_ids), list(plan.uncond_prompt_ids)
        rows = [list(map(int, row)) for row in first]  # frame 1 of each sample: its codes and eof
        rest = _sample(sampler, plan, [video + row for row in rows], [[False] * len(video) + [True] * step] * n,
                       [uncond + row for row in rows], [[False] * len(uncond) + [True] * step] * n,
                       cfg=s.cfg_video, top_k=s.top_k_video, new=(frames - 1) * step,
                       seed=call_seed(s.seed, 1), on_token=on_token)
        parts.append(rest)
        timings["later_frames"] = time.perf_counter() - started
    vision_ids = np.concatenate(parts, axis=1).astype(np.int32)  # [n, frames * step]
    per_frame = vision_ids.reshape(n, frames, step)
    if not (per_frame[:, :, -1] == plan.spec.eof_id).all():  # the forced positions: a broken invariant
        raise AssertionError("a frame does not end with the end-of-frame id")
    grid = plan.spec.grid or (plan.spec.tokens_per_frame,)
    codes = per_frame[:, :, :-1].reshape(n, frames, *grid)  # [n, frames, h, w]
    return VisionGeneration(plan, vision_ids, codes, timings)


def lwm_uint8(frames: np.ndarray) -> np.ndarray:
    """VQGAN output in [-1, 1] -> uint8 pixels as LWM writes them: ((x + 1) * 127.5), truncated."""
    return ((np.clip(np.asarray(frames, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _numbered(path: Path, count: int) -> list[Path]:
    """[path] for one sample; name_0.ext, name_1.ext, ... for several."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]


def _probe(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lwm-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LWMError(f"cannot write {what} in {folder} ({exc.strerror or exc}); pick another folder") from None


def output_paths(out: str | os.PathLike, settings: GenerationSettings,
                 tokens_out: str | os.PathLike | None = None) -> tuple[list[Path], list[Path]]:
    """(frame files, token files) a run will write, checked before any work: the suffixes (.png for
    one frame, .gif / .mp4 for any) and that their folders take files. Several samples are numbered
    (fire_0.png, fire_1.png, ...)."""
    out = Path(out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise LWMError(f"--out {out}: cannot write {suffix or 'a name without a suffix'}; use .png (one image), "
                       ".gif or .mp4")
    if suffix == ".png" and settings.frames > 1:
        raise LWMError(f"--out {out}: a PNG holds one image, not {settings.frames} frames; use .mp4 or .gif")
    _probe(out.parent, "the output")
    tokens: list[Path] = []
    if tokens_out is not None:
        tokens_path = Path(tokens_out).expanduser()
        if tokens_path.suffix.lower() != ".npz":
            raise LWMError(f"--save-tokens {tokens_path}: token files end in .npz (lwm tokenize-video's format)")
        _probe(tokens_path.parent, "the token file")
        tokens = _numbered(tokens_path, settings.samples)
    return _numbered(out, settings.samples), tokens


def write_generation(result: VisionGeneration, vqgan, out: str | os.PathLike, *,
                     tokens_out: str | os.PathLike | None = None, fps: float = FPS) -> tuple[list[Path], list[Path]]:
    """Decode each sample's codes with `vqgan` (a VQGANTokenizer) and write them to `out` (numbered
    for several samples), and its codes to `tokens_out` as token files (`lwm tokenize-video` format).
    Each file is written under a temporary name and renamed; returns (frame files, token files)."""
    from lwm_core.token_files import TokenFile, save_tokens
    from lwm_core.video import write_frames

    settings = result.plan.settings
    files, token_files = output_paths(out, settings, tokens_out)
    if tuple(result.codes.shape[2:]) != tuple(vqgan.config.latent_size for _ in range(2)):
        raise LWMError(f"codes of {result.codes.shape[2:]} per frame do not fit this VQGAN's "
                       f"{vqgan.config.latent_size}x{vqgan.config.latent_size} grid")
    try:
        for i, (path, codes) in enumerate(zip(files, result.codes, strict=True)):
            write_frames(lwm_uint8(vqgan.decode(codes)), path, fps=fps)  # [frames, H, W, 3]
            if token_files:
                save_tokens(token_files[i], TokenFile(
                    codes=codes, frame_indices=np.arange(len(codes)), fps=fps if len(codes) > 1 else 0.0,
                    source=f"lwm generate: {result.plan.prompt}", vqgan_id=vqgan.identity,
                    vqgan_config=vqgan.config.to_json()))
    except OSError as exc:
        raise LWMError(f"cannot write {getattr(exc, 'filename', None) or out} ({exc.strerror or exc}); "
                       "pick another folder") from None
    return files, token_files
