"""The LWM language model (LLaMA-2 style), text-only or with LWM's vision embeddings and head.

    model = LWMModel(ModelConfig.from_name("debug"), rngs=nnx.Rngs(0))
    text_logits, vision_logits = model(input_ids)                      # [B, T, V], None
    cache = model.init_cache(batch_size=2, max_length=128)
    logits, _, cache = model.prefill(prompt_ids, cache, attention_mask=prompt_mask, chunk_size=64)
    logits, _, cache = model.decode(next_ids, cache)                   # one or more new tokens

The NNX state path of every weight is its key in LWM's checkpoints (`transformer/wte/embedding`,
`transformer/h/scan_decoder/attention/wq/kernel`, ...; see `lwm_core.checkpoint.keys`). Building a
model from a checkpoint or on a mesh is `lwm_core.load_model`'s job (`lwm_core.sharding`); the KV
cache lives in `lwm_core.cache`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core import attention
from lwm_core import cache as kv
from lwm_core.cache import KVCache
from lwm_core.checkpoint.keys import state_to_params
from lwm_core.config import ModelConfig
from lwm_core.decoder import CacheStep, LayerStack
from lwm_core.errors import LWMError, from_runtime_error, raise_if
from lwm_core.layers import Dense, Embed, RMSNorm, rope_angles

__all__ = ["KVCache", "LWMModel", "default_position_ids"]


def _tracing(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _extend_jit(graphdef, state, input_ids, cache, vision_masks, attention_mask, last_only, check_ids):
    model = nnx.merge(graphdef, state)
    return model.extend(input_ids, cache, vision_masks, attention_mask, last_only=last_only, check_ids=check_ids)


def default_position_ids(batch: int, seq: int, attention_mask=None, segment_ids=None) -> jax.Array:
    """[B, T] positions: restart at 0 in every packed segment; left padding shifts real tokens to 0."""
    if segment_ids is not None:
        t = jnp.arange(seq)[None, :]
        starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                                  segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
        first = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)  # index where each segment begins
        return (t - first).astype(jnp.int32)
    if attention_mask is not None:
        return (jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1).astype(jnp.int32)
    return jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))


class Transformer(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh=None):
        std, pd = config.initializer_range, config.param_dtype
        self.wte = Embed(config.vocab_size, config.hidden_size, std=std, param_dtype=pd, rngs=rngs)
        self.vte = (Embed(config.vision_vocab_size, config.hidden_size, std=std, param_dtype=pd, rngs=rngs)
                    if config.vision else None)
        self.h = LayerStack(config, rngs=rngs, mesh=mesh)
        self.ln_f = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=pd)
        self.config = config

    def embed(self, input_ids, vision_masks):
        """[B, T] ids -> [B, T, D]; vision positions read `vte`, text positions `wte` (as LWM)."""
        dtype = self.config.dtype
        if vision_masks is None:
            return self.wte(input_ids, dtype)
        text = self.wte(jnp.where(vision_masks, 0, input_ids), dtype)
        vision = self.vte(jnp.where(vision_masks, input_ids, 0), dtype)
        return jnp.where(vision_masks[..., None], vision, text)


class LWMModel(nnx.Module):
    """LWM's LLaMA / VideoLLaMA. Call with token ids [B, T]; returns (text_logits, vision_logits)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh=None):
        std, pd = config.initializer_range, config.param_dtype
        self.config = config
        self.mesh = mesh  # where the weights live (lwm_core.sharding.build_model); None: one device
        self.transformer = Transformer(config, rngs=rngs, mesh=mesh)
        head = dict(std=std, param_dtype=pd, rngs=rngs, axes=("embed", "vocab"))
        self.lm_head = Dense(config.hidden_size, config.vocab_size, **head)
        self.vision_head = Dense(config.hidden_size, config.vision_vocab_size, **head) if config.vision else None

    # ---------------------------------------------------------------- full forward
    def __call__(self, input_ids, vision_masks=None, attention_mask=None, segment_ids=None,
                 position_ids=None):
        """input_ids [B, T] int; vision_masks [B, T] bool (vision models); attention_mask [B, T]
        (0 = padding); segment_ids [B, T] (packed examples never attend across); position_ids [B, T]
        (default: 0.. per segment, or counting only real tokens under left padding).

        Returns text_logits [B, T, vocab_size] and vision_logits [B, T, vision_vocab_size] (None for
        text-only models). Both heads run at every position, as in LWM; `vision_masks` says which
        one predicts each position's next token.
        """
        hidden, order = self.hidden_states(input_ids, vision_masks, attention_mask, segment_ids, position_ids)
        text, vision = self._heads(hidden)
        if order is not None:
            back = jnp.asarray(attention.layout.inverse(order)[:input_ids.shape[1]])
            text, vision = (None if x is None else jnp.take(x, back, axis=1) for x in (text, vision))
        return text, vision

    def hidden_states(self, input_ids, vision_masks=None, attention_mask=None, segment_ids=None,
                      position_ids=None, *, check_ids: bool = True):
        """Final hidden states (after ln_f) [B, T', D] and the token order they are in: `order` [T'] is
        the original index of each slot when a ring layout permutes (and pads) the tokens, None when
        they keep their order (T' = T). A loss that sums over positions (lwm_core.train.loss) can stay
        in that order; arguments as `__call__`."""
        batch, seq = self._check_inputs(input_ids, vision_masks, check_ids=check_ids)
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, attention_mask, segment_ids)
        order = None
        if self.config.attention_impl == "ring":
            # Balanced ring layouts: permute the tokens ONCE here (and the logits back in __call__),
            # so every layer's ring attention works on arranged, sp-sharded blocks with no gather.
            order = attention.arrange_for_ring(seq, self.mesh, self.config.sequence_layout)
        if order is not None:
            if attention_mask is None:
                attention_mask = jnp.ones((batch, seq), bool)

            def arrange(x, fill):
                if x is None:
                    return None
                x = jnp.pad(x, ((0, 0), (0, len(order) - seq)), constant_values=fill)
                return jnp.take(x, jnp.asarray(order), axis=1)

            input_ids, vision_masks, attention_mask = (arrange(input_ids, 0), arrange(vision_masks, False),
                                                       arrange(attention_mask, False))
            segment_ids, position_ids = arrange(segment_ids, -1), arrange(position_ids, 0)
        return self._hidden(input_ids, vision_masks, position_ids, segment_ids, attention_mask, order), order

    def _hidden(self, input_ids, vision_masks, position_ids, segment_ids, attention_mask, order=None):
        x = self.transformer.embed(input_ids, vision_masks)
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        out = self.transformer.h(x, cos, sin, segment_ids=segment_ids, attention_mask=attention_mask,
                                 positions=None if order is None else jnp.asarray(order, jnp.int32))
        return self.transformer.ln_f(out, self.config.dtype)

    def _heads(self, hidden):
        dtype = self.config.dtype
        text_logits = self.lm_head(hidden, dtype)
        vision_logits = self.vision_head(hidden, dtype) if self.vision_head is not None else None
        return text_logits, vision_logits

    def _check_inputs(self, input_ids, vision_masks, *, check_ids: bool = True) -> tuple[int, int]:
        cfg = self.config
        if input_ids.ndim != 2:
            raise LWMError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        batch, seq = input_ids.shape
        if seq > cfg.max_sequence_length:
            raise LWMError(f"sequence of {seq} tokens exceeds max_sequence_length "
                           f"{cfg.max_sequence_length}; shorten the input or use a longer-context "
                           "config (e.g. ModelConfig.from_name('7b', context='1m'))")
        if vision_masks is not None:
            if not cfg.vision:
                raise LWMError("vision_masks given to a text-only model; load a vision-language "
                               "checkpoint or build the config with vision=True")
            if vision_masks.shape != input_ids.shape:
                raise LWMError(f"vision_masks shape {tuple(vision_masks.shape)} must equal input_ids "
                               f"shape {tuple(input_ids.shape)}")
        if check_ids and seq:
            limit = cfg.vocab_size if vision_masks is None else jnp.where(vision_masks, cfg.vision_vocab_size,
                                                                           cfg.vocab_size)
            bad = (input_ids < 0) | (input_ids >= limit)
            first = jnp.argmax(bad.reshape(-1))
            raise_if(jnp.any(bad), "token id {} is outside the model's vocabulary (text ids < {}" +
                     (f", vision ids < {cfg.vision_vocab_size}" if cfg.vision else "") +
                     "); check that the tokenizer and vision codes match this model",
                     input_ids.reshape(-1)[first], cfg.vocab_size)
        return batch, seq

    # ---------------------------------------------------------------- cached decoding
    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """An empty KV cache for up to `max_length` tokens per row, on this model's mesh."""
        return kv.init_cache(self.config, batch_size, max_length, mesh=self.mesh, dtype=dtype)

    def extend(self, input_ids, cache: KVCache, vision_masks=None, attention_mask=None, *,
               last_only: bool = False, check_ids: bool = True):
        """Append tokens [B, T] after what the cache holds (any T: a prompt chunk or decoded tokens).

        `attention_mask` [B, T] (False = padding) marks padding inside the new tokens, e.g. the left
        padding of a batch of prompts; padded slots are never attended and do not advance a row's
        positions. Returns (text_logits, vision_logits, cache): the logits of the new positions,
        equal to the full forward pass's there ([B, 1, V] of the last one with `last_only`).
        """
        batch, seq = self._check_inputs(input_ids, vision_masks, check_ids=check_ids)
        if cache.batch_size != batch:
            raise LWMError(f"the KV cache holds {cache.batch_size} rows but {batch} were given")
        kv.check_room(cache, seq)
        mask = jnp.ones((batch, seq), bool) if attention_mask is None else attention_mask.astype(bool)
        position_ids = cache.next_position[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1  # [B, T]
        key_valid = jax.lax.dynamic_update_slice_in_dim(cache.key_valid, mask, cache.length, axis=1)
        step = CacheStep(index=cache.length, q_slots=cache.length + jnp.arange(seq, dtype=jnp.int32),
                         key_valid=key_valid)
        x = self.transformer.embed(input_ids, vision_masks)
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        x, k, v = self.transformer.h.extend(x, cos, sin, cache.k, cache.v, step)
        hidden = self.transformer.ln_f(x[:, -1:] if last_only else x, self.config.dtype)
        cache = KVCache(k=k, v=v, key_valid=key_valid, length=cache.length + seq,
                        next_position=cache.next_position + jnp.sum(mask, axis=1, dtype=jnp.int32))
        return (*self._heads(hidden), cache)

    def extend_groups(self, parts, cache: KVCache, *, check_ids: bool = True):
        """`extend` for rows of different lengths without padding them to one: `parts` are groups of
        consecutive cache rows, in row order, each (input_ids [B_g, T_g], attention_mask [B_g, T_g] or
        None, vision_masks [B_g, T_g] or None). Every group's tokens end at the same slot (a shorter
        group's rows start later), so the cache afterwards is the one `extend` gives for the groups
        left-padded to the longest; the weights run over sum(B_g x T_g) tokens, not B x max(T_g).
        One device only (e.g. a guided prefill: a 41-token prompt and the 4-token unconditional row).
        Returns (text_logits, vision_logits, cache) of each row's last position ([B, 1, V])."""
        cfg = self.config
        if self.mesh is not None and self.mesh.size > 1:
            raise LWMError("extend_groups runs on one device; use extend (rows padded to one length) on a mesh")
        rows = sum(ids.shape[0] for ids, _, _ in parts)
        if cache.batch_size != rows:
            raise LWMError(f"the KV cache holds {cache.batch_size} rows but the groups have {rows}")
        longest = max(ids.shape[1] for ids, _, _ in parts)
        kv.check_room(cache, longest)
        groups, ids_all, vis_all, pos_all, key_valid, counts = [], [], [], [], cache.key_valid, []
        first = start = 0
        for ids, mask, vmask in parts:
            b, t = self._check_inputs(ids, vmask, check_ids=check_ids)
            mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
            groups.append(attention.RowGroup(first, b, t, start))
            positions = cache.next_position[first:first + b, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
            key_valid = jax.lax.dynamic_update_slice(key_valid, mask, (first, cache.length + longest - t))
            ids_all.append(ids.reshape(1, -1))
            vis_all.append((jnp.zeros((b, t), bool) if vmask is None else vmask).reshape(1, -1))
            pos_all.append(positions.reshape(1, -1))
            counts.append(jnp.sum(mask, axis=1, dtype=jnp.int32))
            first, start = first + b, start + b * t
        vision = any(vmask is not None for _, _, vmask in parts)
        x = self.transformer.embed(jnp.concatenate(ids_all, 1), jnp.concatenate(vis_all, 1) if vision else None)
        cos, sin = rope_angles(jnp.concatenate(pos_all, 1), cfg.head_dim, cfg.rope_theta)
        step = CacheStep(index=cache.length, q_slots=jnp.zeros((0,), jnp.int32), key_valid=key_valid,
                         groups=tuple(groups))
        x, k, v = self.transformer.h.extend(x, cos, sin, cache.k, cache.v, step)
        last = np.concatenate([g.start + np.arange(1, g.rows + 1) * g.length - 1 for g in groups])
        hidden = self.transformer.ln_f(x[0, last][:, None], cfg.dtype)  # [B, 1, D]
        cache = KVCache(k=k, v=v, key_valid=key_valid, length=cache.length + longest,
                        next_position=cache.next_position + jnp.concatenate(counts))
        return (*self._heads(hidden), cache)

    def prefill(self, input_ids, cache: KVCache, vision_masks=None, attention_mask=None, *,
                chunk_size: int | None = None, last_only: bool = False):
        """Run a (left-padded) prompt [B, T] into the cache, `chunk_size` tokens at a time (None: all
        at once), so memory holds the cache and one chunk. The cache may already hold tokens (a
        follow-up turn). A first shorter chunk takes T % chunk_size tokens so the rest are whole.

        Returns (text_logits, vision_logits, cache) as `extend`.
        """
        seq = input_ids.shape[1]
        if chunk_size is not None and chunk_size < 1:
            raise LWMError(f"chunk_size must be positive, got {chunk_size}")
        chunk = seq if not chunk_size else min(chunk_size, seq)
        bounds = list(range(seq % chunk, seq + 1, chunk))
        if bounds[0] != 0:
            bounds.insert(0, 0)
        outputs = []
        extend = self.extend if _tracing(input_ids, cache.k) else self._compiled_extend()
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            cut = lambda x, start=start, stop=stop: None if x is None else x[:, start:stop]
            *logits, cache = extend(cut(input_ids), cache, cut(vision_masks), cut(attention_mask),
                                    last_only=last_only)
            outputs.append(logits)
        if last_only or len(outputs) == 1:
            return (*outputs[-1], cache)
        text = jnp.concatenate([o[0] for o in outputs], axis=1)
        vision = None if outputs[0][1] is None else jnp.concatenate([o[1] for o in outputs], axis=1)
        return text, vision, cache

    def decode(self, input_ids, cache: KVCache, vision_masks=None, *, check_ids: bool = True):
        """Append new tokens [B, T] (usually T = 1) after what the cache holds -> (text_logits,
        vision_logits, cache)."""
        extend = self.extend if _tracing(input_ids, cache.k) else self._compiled_extend()
        return extend(input_ids, cache, vision_masks, check_ids=check_ids)

    def _compiled_extend(self):
        """`extend` compiled, for eager callers of `prefill` / `decode` (one compile per shape)."""
        graphdef, state = nnx.split(self)

        def run(input_ids, cache, vision_masks=None, attention_mask=None, *, last_only=False, check_ids=True):
            kv.check_room(cache, input_ids.shape[1])  # eagerly: a plain LWMError
            try:
                return _extend_jit(graphdef, state, jnp.asarray(input_ids), cache, vision_masks, attention_mask,
                                   last_only, check_ids)
            except jax.errors.JaxRuntimeError as exc:
                error = from_runtime_error(exc)
                if error is None:
                    raise
                raise error from None

        return run

    # ---------------------------------------------------------------- parameters
    def params_dict(self) -> dict[str, np.ndarray]:
        """Weights as LWM's flat checkpoint dict: key -> numpy array (scanned layout, whatever
        `scan_layers` says about how this model runs them)."""
        return state_to_params(nnx.state(self, nnx.Param))

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict[str, np.ndarray], *, mesh=None) -> LWMModel:
        """A model from LWM's flat checkpoint dict (scanned layout), placed on `mesh` if given.
        The dict is not modified (see `lwm_core.sharding.build_model` to consume it)."""
        from lwm_core.sharding import build_model

        return build_model(config, dict(params), mesh=mesh)
