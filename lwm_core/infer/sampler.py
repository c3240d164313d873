"""One sampler for text and vision: chunked prefill into a bucketed KV cache, then one jitted step
per token, with composable logits processors.

    sampler = Sampler(model)
    out = sampler.generate([[1, 450, 4996], [1, 22172]], max_new_tokens=32, eos_token_id=2)
    out.tokens                                                 # [B, 32] int32, eos after the end

Vision generation as LWM does it (the vision head picks every step, end-of-frame forced at every
257th generated position, classifier-free guidance over [conditional; unconditional] rows):

    sampler.generate(cond_prompts, uncond_prompts=[uncond], head="vision", cfg_scale=5.0,
                     settings=SamplingSettings(temperature=1.0, top_k=8192),
                     forced=ForcedTokens.every(257, 8192), max_new_tokens=257)

Compilations: prompts are left-padded to a length bucket and the cache sized to a bucket
(`lwm_core.cache.bucket_length`), so a batch of prompts of many lengths, or a needle grid,
compiles once per bucket; `compilations` counts them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.cache import KVCache, bucket_length, init_cache
from lwm_core.errors import LWMError, from_runtime_error
from lwm_core.infer import processors as lp
from lwm_core.mesh import axis_size, seq_axis
from lwm_core.model import LWMModel

HEADS = ("text", "vision")
# A prefill in row groups copies each group's rows of a layer's cache to attend them: only below this
_GROUPED_LAYER_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How a token is chosen from the logits: temperature 0 is greedy; top_k / top_p None is off."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def processor(self) -> lp.Processor:
        return lp.compose(lp.temperature(self.temperature), lp.top_k(self.top_k), lp.top_p(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class ForcedTokens:
    """Tokens forced at given generated positions (0 = the first new token), whatever was sampled:
    `positions` -> `tokens`, and/or `token_every` at every `period`-th position (LWM's end of
    frame: `ForcedTokens.every(257, 8192)` forces 8192 at positions 256, 513, ...)."""

    positions: tuple[int, ...] = ()
    tokens: tuple[int, ...] = ()
    period: int = 0
    token_every: int = -1

    @classmethod
    def every(cls, period: int, token: int) -> ForcedTokens:
        if period < 1:
            raise LWMError(f"a forced-token period must be >= 1, got {period}")
        return cls(period=period, token_every=token)

    def at(self, step: int) -> int:
        """The token forced at generated position `step`, or -1."""
        if step in self.positions:
            return self.tokens[self.positions.index(step)]
        if self.period and (step + 1) % self.period == 0:
            return self.token_every
        return -1


@dataclasses.dataclass
class Generation:
    """What `Sampler.generate` returns."""

    tokens: np.ndarray  # [B, N] int32: new tokens, eos (or 0) after a row stopped
    vision_masks: np.ndarray  # [B, N] bool: tokens chosen by the vision head
    lengths: np.ndarray  # [B] int: tokens per row up to and including its eos
    prompt_length: int  # padded prompt tokens (the bucket)
    cache_length: int  # slots of the KV cache


def _left_pad(rows: Sequence[Sequence], length: int, fill) -> np.ndarray:
    out = np.full((len(rows), length), fill, dtype=np.asarray(fill).dtype)
    for i, row in enumerate(rows):
        if len(row):
            out[i, length - len(row):] = np.asarray(row)
    return out


def _inputs(rows, vision_rows, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, attention mask, vision mask) [B, length] of `rows` left-padded to `length`."""
    ids = _left_pad(rows, length, np.int32(0))
    mask = _left_pad([[True] * len(r) for r in rows], length, np.bool_(False))
    vmask = np.zeros_like(mask) if vision_rows is None else _left_pad(vision_rows, length, np.bool_(False))
    return ids, mask, vmask


class Sampler:
    """Compiled prefill and step functions for one model; reuse it across calls to skip compiling.

    `chunk_size`: prompt tokens per prefill step (memory: the cache plus one chunk).
    `prompt_bucket_min`: the shortest prompt bucket; shorter prompts are left-padded to it.
    `group_guided_rows`: prefill short unconditional rows at their own length (`_row_groups`).
    """

    def __init__(self, model: LWMModel, *, chunk_size: int = 2048, prompt_bucket_min: int = 16,
                 group_guided_rows: bool = True):
        if chunk_size < 1:
            raise LWMError(f"chunk_size must be positive, got {chunk_size}")
        self.model = model
        self.config = model.config
        self.mesh = model.mesh
        self.chunk_size = chunk_size
        self.prompt_bucket_min = prompt_bucket_min
        self.group_guided_rows = group_guided_rows
        self.graphdef, self.state = nnx.split(model)
        self.traces: dict[str, int] = {"prefill": 0, "step": 0}
        self._jitted: dict[tuple, Callable] = {}

    @property
    def compilations(self) -> int:
        """How many times the prefill and step functions were traced (each trace is one compile)."""
        return sum(self.traces.values())

    # ---------------------------------------------------------------- jitted pieces
    def _head_logits(self, text, vision, head: str):
        if head == "vision":
            if vision is None:
                raise LWMError("head='vision' needs a vision-language model (this one has no vision head)")
            return vision
        return text

    def _choose(self, logits, rng, force, settings: SamplingSettings, cfg):
        logits = logits[:, -1]  # [B, V]
        if cfg is not None:
            logits = lp.guidance(cfg)(logits)
        token = lp.pick(settings.processor()(logits), rng, greedy=settings.greedy)
        token = jnp.where(force >= 0, force, token)
        return jnp.concatenate([token, token]) if cfg is not None else token  # both CFG rows get it

    def _prefill_fn(self, key, grouped: bool = False):
        """The jitted prefill of one chunk: parts = ((ids, mask, vmask),) of every row padded to one
        length, or with `grouped` one such triple per group of rows at its own length
        (`_row_groups`, `LWMModel.extend_groups`)."""
        name = ("prefill", grouped) + key
        if name not in self._jitted:
            head, settings, cfg, vision = key

            def prefill_chunk(state, parts, cache, rng, force):
                self.traces["prefill"] += 1
                model = nnx.merge(self.graphdef, state)
                parts = [(ids, mask, vmask if vision else None) for ids, mask, vmask in parts]
                if grouped:
                    text, vis, cache = model.extend_groups(parts, cache, check_ids=False)
                else:
                    ((ids, mask, vmask),) = parts
                    text, vis, cache = model.extend(ids, cache, vmask, mask, last_only=True, check_ids=False)
                token = self._choose(self._head_logits(text, vis, head), rng, force, settings, cfg)
                return token, cache

            self._jitted[name] = jax.jit(prefill_chunk, donate_argnums=(2,))
        return self._jitted[name]

    def _step_fn(self, key):
        if ("step",) + key not in self._jitted:
            head, settings, cfg, vision = key

            def step(state, token, is_vision, cache, rng, force):
                self.traces["step"] += 1
                model = nnx.merge(self.graphdef, state)
                vmask = jnp.broadcast_to(is_vision, token.shape)[:, None] if vision else None
                text, vis, cache = model.decode(token[:, None], cache, vmask, check_ids=False)
                return self._choose(self._head_logits(text, vis, head), rng, force, settings, cfg), cache

            self._jitted[("step",) + key] = jax.jit(step, donate_argnums=(3,))
        return self._jitted[("step",) + key]

    # ---------------------------------------------------------------- host side
    def _check_prompt(self, rows, vrows):
        cfg = self.config
        for i, row in enumerate(rows):
            ids = np.asarray(row, np.int64)
            vmask = np.zeros(ids.shape, bool) if vrows is None else np.asarray(vrows[i], bool)
            if vmask.shape != ids.shape:
                raise LWMError(f"prompt {i}: vision_masks has {vmask.size} entries for {ids.size} tokens")
            limit = np.where(vmask, cfg.vision_vocab_size, cfg.vocab_size)
            bad = np.flatnonzero((ids < 0) | (ids >= limit))
            if bad.size:
                kind = "vision" if vmask[bad[0]] else "text"
                raise LWMError(f"prompt {i}: token id {ids[bad[0]]} at position {bad[0]} is outside the {kind} "
                               f"vocabulary ({int(limit[bad[0]])} ids); check the tokenizer matches the model")
            if ids.size == 0:
                raise LWMError(f"prompt {i} is empty; a prompt needs at least one token (e.g. bos)")

    def plan(self, prompt_length: int, max_new_tokens: int) -> tuple[int, int, int]:
        """(padded prompt length, chunk size, cache length) for a prompt of `prompt_length` tokens."""
        sp = axis_size(self.mesh, seq_axis())
        if prompt_length <= self.chunk_size:
            padded = min(bucket_length(prompt_length, minimum=self.prompt_bucket_min), self.chunk_size)
            chunk = padded
        else:
            # n chunks as few as chunk_size allows, each as short as the prompt allows, rounded up to 64
            # tokens (or sp): an 8.2K-token prompt in chunks of 2048 is padded to 8.25K, not 10K (left
            # padding costs the full price of real tokens); prompts of nearly one length share a shape
            n = -(-prompt_length // self.chunk_size)
            step = math.lcm(64, sp)
            per_chunk = -(-prompt_length // n)
            chunk = min(self.chunk_size, -(-per_chunk // step) * step)
            padded = n * chunk
        limit = self.config.max_sequence_length
        if padded + max_new_tokens > limit >= prompt_length + max_new_tokens:
            # the chunks would pass the model's limit (a 1M-token prompt on a 1M model): pad to a
            # multiple of 64 (or of sp) instead; the last chunk is shorter, one more compile
            for step in (math.lcm(64, sp), sp):
                padded = -(-prompt_length // step) * step
                if padded + max_new_tokens <= limit:
                    break
            chunk = min(chunk, padded)
        cache = bucket_length(padded + max_new_tokens, multiple=sp)
        if cache > limit:
            need = padded + max_new_tokens
            if need > limit:
                raise LWMError(f"prompt of {prompt_length} tokens + {max_new_tokens} new tokens exceeds the "
                               f"model's max_sequence_length {limit}")
            # the bucket does not fit: the smallest multiple of 256 x sp that does (odd sizes make slow
            # attention chunks), else of sp, else the limit itself
            for step in (256 * sp, sp):
                cache = -(-need // step) * step
                if cache <= limit:
                    break
            else:
                cache = limit
        return padded, chunk, cache

    def _row_groups(self, rows, conditional: int | None, padded: int, chunk: int, cache_len: int):
        """[(first row, end row, padded length)] of the prefill. Usually one group, every row padded to
        the longest. With guidance, a prompt in one chunk and no mesh (or one device), the
        unconditional rows (LWM's `<s><vision>`: 4 ids against an image prompt of ~40) go as a second
        group padded to their own small bucket, their slots ending where the conditional rows' end, so
        the cache and every step after are the same as padding them (tested). The weights then run
        over 48 + 4 tokens instead of 2 x 48 for `lwm generate` of an image."""
        whole = [(0, len(rows), padded)]
        if (not self.group_guided_rows or conditional is None or padded != chunk
                or (self.mesh is not None and self.mesh.size > 1)):
            return whole
        cfg = self.config
        layer_bytes = 2 * len(rows) * cfg.num_attention_heads * cache_len * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
        short = bucket_length(max(len(r) for r in rows[conditional:]), minimum=2)
        if short >= padded or layer_bytes > _GROUPED_LAYER_BYTES:
            return whole
        return [(0, conditional, padded), (conditional, len(rows), short)]

    def prefill(self, prompts, *, vision_masks=None, max_new_tokens: int, uncond_prompts=None,
                uncond_vision_masks=None, head: str = "text", settings: SamplingSettings = SamplingSettings(),
                cfg_scale: float | None = None, force_first: int = -1, seed: int = 0):
        """Left-pad `prompts` (lists of ids; for CFG followed by `uncond_prompts`) to their bucket and
        run them chunk by chunk into a fresh cache sized for `max_new_tokens` more.

        Returns (first token [B] (per conditional row), cache, key) where `key` selects the step
        function for `step`.
        """
        if head not in HEADS:
            raise LWMError(f"head must be one of {HEADS}, got {head!r}")
        rows, vrows = [list(p) for p in prompts], None if vision_masks is None else [list(v) for v in vision_masks]
        conditional = len(rows) if cfg_scale is not None else None
        if cfg_scale is not None:
            if uncond_prompts is None or len(uncond_prompts) not in (1, len(rows)):
                raise LWMError("classifier-free guidance needs uncond_prompts: one, or one per prompt")
            extra = [list(p) for p in uncond_prompts]
            extra = extra * len(rows) if len(extra) == 1 else extra
            if vrows is not None or uncond_vision_masks is not None:
                vrows = (vrows or [[False] * len(r) for r in rows])
                um = [list(v) for v in uncond_vision_masks] if uncond_vision_masks is not None else [
                    [False] * len(r) for r in extra]
                vrows = vrows + (um * len(rows) if len(um) == 1 else um)
            rows = rows + extra
        elif uncond_prompts is not None:
            raise LWMError("uncond_prompts given without cfg_scale")
        self._check_prompt(rows, vrows)
        if vrows is not None and not self.config.vision:
            raise LWMError("vision_masks given to a text-only model; load a vision-language checkpoint")
        longest = max(len(r) for r in rows)
        padded, chunk, cache_len = self.plan(longest, max_new_tokens)
        key = (head, settings, cfg_scale, self.config.vision)  # selects the compiled functions
        rng = jax.random.PRNGKey(seed)
        groups = self._row_groups(rows, conditional, padded, chunk, cache_len)
        cache = init_cache(self.config, len(rows), cache_len, mesh=self.mesh)
        if len(groups) > 1:
            parts = tuple(_inputs(rows[first:end], None if vrows is None else vrows[first:end], length)
                          for first, end, length in groups)
            token, cache = self._run(self._prefill_fn(key, grouped=True), self.state, parts, cache,
                                     jax.random.fold_in(rng, 0), jnp.int32(force_first))
            return token, cache, key, padded
        inputs = _inputs(rows, vrows, padded)
        fn = self._prefill_fn(key)
        token = None
        for start in range(0, padded, chunk):
            stop = start + chunk
            force = jnp.int32(force_first if stop >= padded else -1)
            part = tuple(x[:, start:stop] for x in inputs)
            token, cache = self._run(fn, self.state, (part,), cache, jax.random.fold_in(rng, 0), force)
        return token, cache, key, padded

    def step(self, token, cache: KVCache, key, *, is_vision: bool, rng, force: int = -1):
        """Feed `token` [rows] (embedded as vision tokens when `is_vision`), pick the next ones."""
        return self._run(self._step_fn(key), self.state, token, jnp.bool_(is_vision), cache, rng,
                         jnp.int32(force))

    @staticmethod
    def _run(fn, *args):
        try:
            return fn(*args)
        except jax.errors.JaxRuntimeError as exc:
            err = from_runtime_error(exc)
            if err is None:
                raise
            raise err from None

    def generate(self, prompts, *, max_new_tokens: int, vision_masks=None, head: str = "text",
                 settings: SamplingSettings = SamplingSettings(), cfg_scale: float | None = None,
                 uncond_prompts=None, uncond_vision_masks=None, forced: ForcedTokens | None = None,
                 eos_token_id: int | None = None, seed: int = 0,
                 on_token: Callable[[int, np.ndarray], None] | None = None,
                 vision_schedule: Callable[[int], bool] | None = None) -> Generation:
        """Generate up to `max_new_tokens` after each prompt (a list of id lists, any lengths).

        `head`: which head picks every token ('text' or 'vision'), or `vision_schedule(step)` to
        choose per step (True = vision). Tokens chosen by the vision head are fed back as vision
        tokens. `eos_token_id` stops a row when the TEXT head picks it (vision code 2 is not eos).
        `on_token(step, tokens [B])` streams each new position. With `cfg_scale`, `uncond_prompts`
        (one, or one per prompt) form the unconditional rows.
        """
        if max_new_tokens < 1:
            raise LWMError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        forced = forced or ForcedTokens()
        heads = [("vision" if vision_schedule(i) else "text") if vision_schedule else head
                 for i in range(max_new_tokens)]
        batch = len(prompts)
        rngs = jax.random.split(jax.random.PRNGKey(seed), max_new_tokens)
        token, cache, key, padded = self.prefill(
            prompts, vision_masks=vision_masks, max_new_tokens=max_new_tokens, uncond_prompts=uncond_prompts,
            uncond_vision_masks=uncond_vision_masks, head=heads[0], settings=settings, cfg_scale=cfg_scale,
            force_first=forced.at(0), seed=seed)
        cache_length = cache.max_length
        out = np.zeros((batch, max_new_tokens), np.int32)
        out_vision = np.zeros((batch, max_new_tokens), bool)
        done = np.zeros(batch, bool)
        lengths = np.full(batch, max_new_tokens)
        fill = 0 if eos_token_id is None else eos_token_id
        for i in range(max_new_tokens):
            if i > 0:
                key = (heads[i],) + key[1:]
                token, cache = self.step(token, cache, key, is_vision=heads[i - 1] == "vision", rng=rngs[i],
                                         force=forced.at(i))
            chosen = np.asarray(token)[:batch]
            out[:, i] = np.where(done, fill, chosen)
            out_vision[:, i] = (heads[i] == "vision") & ~done
            if on_token:
                on_token(i, out[:, i])
            if eos_token_id is not None and heads[i] == "text":
                newly = ~done & (chosen == eos_token_id)
                lengths[newly] = i + 1
                done |= newly
            if done.all():
                out[:, i + 1:] = fill
                break
        return Generation(out, out_vision, lengths, padded, cache_length)
