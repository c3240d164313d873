"""The LWM language model (LLaMA-2 style), text-only or with LWM's vision embeddings and head.

    model = LWMModel(ModelConfig.from_name("debug"), rngs=nnx.Rngs(0))
    text_logits, vision_logits = model(input_ids)                      # [B, T, V], None
    cache = model.init_cache(batch_size=2, max_length=128)
    logits, _, cache = model.prefill(prompt_ids, cache, attention_mask=prompt_mask)
    logits, _, cache = model.decode(next_ids, cache)                   # one or more new tokens

The NNX state path of every weight is its key in LWM's checkpoints (`transformer/wte/embedding`,
`transformer/h/scan_decoder/attention/wq/kernel`, ...): `params_dict` / `from_params` convert.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.config import ModelConfig
from lwm_core.decoder import DecodeContext, LayerCache, LayerStack
from lwm_core.errors import LWMError
from lwm_core.layers import Dense, Embed, RMSNorm, rope_angles


class KVCache(NamedTuple):
    """Decoding state. Slots [0, length) hold tokens; padding slots are False in `key_valid`."""

    k: jax.Array  # [L, B, S, H, Dh]
    v: jax.Array  # [L, B, S, H, Dh]
    key_valid: jax.Array  # [B, S] bool
    length: jax.Array  # int32 scalar: slots used (same for every row)
    next_position: jax.Array  # [B] int32: rotary position of each row's next token

    @property
    def max_length(self) -> int:
        return self.k.shape[2]


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
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        std, pd = config.initializer_range, config.param_dtype
        self.wte = Embed(config.vocab_size, config.hidden_size, std=std, param_dtype=pd, rngs=rngs)
        self.vte = (Embed(config.vision_vocab_size, config.hidden_size, std=std, param_dtype=pd, rngs=rngs)
                    if config.vision else None)
        self.h = LayerStack(config, rngs=rngs)
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

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        std, pd = config.initializer_range, config.param_dtype
        self.config = config
        self.transformer = Transformer(config, rngs=rngs)
        self.lm_head = Dense(config.hidden_size, config.vocab_size, std=std, param_dtype=pd, rngs=rngs)
        self.vision_head = (Dense(config.hidden_size, config.vision_vocab_size, std=std, param_dtype=pd,
                                  rngs=rngs) if config.vision else None)

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
        batch, seq = self._check_inputs(input_ids, vision_masks)
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, attention_mask, segment_ids)
        hidden = self._hidden(input_ids, vision_masks, position_ids, segment_ids, attention_mask)
        return self._heads(hidden)

    def _hidden(self, input_ids, vision_masks, position_ids, segment_ids, attention_mask, return_kv=False):
        x = self.transformer.embed(input_ids, vision_masks)
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        out = self.transformer.h(x, cos, sin, segment_ids=segment_ids, attention_mask=attention_mask,
                                 return_kv=return_kv)
        if return_kv:
            return self.transformer.ln_f(out[0], self.config.dtype), out[1]
        return self.transformer.ln_f(out, self.config.dtype)

    def _heads(self, hidden):
        dtype = self.config.dtype
        text_logits = self.lm_head(hidden, dtype)
        vision_logits = self.vision_head(hidden, dtype) if self.vision_head is not None else None
        return text_logits, vision_logits

    def _check_inputs(self, input_ids, vision_masks) -> tuple[int, int]:
        if input_ids.ndim != 2:
            raise LWMError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        batch, seq = input_ids.shape
        if seq > self.config.max_sequence_length:
            raise LWMError(f"sequence of {seq} tokens exceeds max_sequence_length "
                           f"{self.config.max_sequence_length}; shorten the input or use a longer-context "
                           "config (e.g. ModelConfig.from_name('7b', context='1m'))")
        if vision_masks is not None:
            if not self.config.vision:
                raise LWMError("vision_masks given to a text-only model; load a vision-language "
                               "checkpoint or build the config with vision=True")
            if vision_masks.shape != input_ids.shape:
                raise LWMError(f"vision_masks shape {tuple(vision_masks.shape)} must equal input_ids "
                               f"shape {tuple(input_ids.shape)}")
        return batch, seq

    # ---------------------------------------------------------------- cached decoding
    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """An empty KV cache for up to `max_length` tokens per row."""
        cfg = self.config
        if max_length > cfg.max_sequence_length:
            raise LWMError(f"cache of {max_length} tokens exceeds max_sequence_length {cfg.max_sequence_length}")
        shape = (cfg.num_hidden_layers, batch_size, max_length, cfg.num_attention_heads, cfg.head_dim)
        dtype = dtype or cfg.dtype
        return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                       key_valid=jnp.zeros((batch_size, max_length), bool),
                       length=jnp.zeros((), jnp.int32),
                       next_position=jnp.zeros((batch_size,), jnp.int32))

    def prefill(self, input_ids, cache: KVCache, vision_masks=None, attention_mask=None, *,
                last_only: bool = False):
        """Run a (left-padded) prompt [B, T] through the model into an EMPTY cache.

        Uses the configured attention (blockwise/ring for long prompts). Returns
        (text_logits, vision_logits, cache); with `last_only` the logits are those of the last
        position only ([B, 1, V]), which is all generation needs and skips the vocabulary
        projection of the rest of the prompt.
        """
        batch, seq = self._check_inputs(input_ids, vision_masks)
        self._check_room(cache, seq)
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), bool)
        attention_mask = attention_mask.astype(bool)
        position_ids = default_position_ids(batch, seq, attention_mask)
        hidden, kv = self._hidden(input_ids, vision_masks, position_ids, None, attention_mask, return_kv=True)
        write = lambda c, new: jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), 0, axis=2)
        cache = KVCache(k=write(cache.k, kv.k), v=write(cache.v, kv.v),
                        key_valid=jax.lax.dynamic_update_slice_in_dim(cache.key_valid, attention_mask, 0, axis=1),
                        length=jnp.asarray(seq, jnp.int32),
                        next_position=jnp.sum(attention_mask, axis=1, dtype=jnp.int32))
        return (*self._heads(hidden[:, -1:] if last_only else hidden), cache)

    def decode(self, input_ids, cache: KVCache, vision_masks=None):
        """Append new tokens [B, T] (usually T = 1) after what the cache holds.

        Returns (text_logits, vision_logits, cache); equal to the full forward's logits at those positions.
        """
        batch, seq = self._check_inputs(input_ids, vision_masks)
        self._check_room(cache, seq)
        steps = jnp.arange(seq, dtype=jnp.int32)
        position_ids = cache.next_position[:, None] + steps[None, :]  # [B, T]
        key_valid = jax.lax.dynamic_update_slice_in_dim(cache.key_valid, jnp.ones((batch, seq), bool),
                                                        cache.length, axis=1)
        slots = jnp.arange(cache.max_length, dtype=jnp.int32)
        causal = slots[None, :] <= cache.length + steps[:, None]  # [T, S]
        ctx = DecodeContext(index=cache.length, mask=key_valid[:, None, :] & causal[None])
        x = self.transformer.embed(input_ids, vision_masks)
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        x, layer_cache = self.transformer.h.decode(x, cos, sin, LayerCache(cache.k, cache.v), ctx)
        hidden = self.transformer.ln_f(x, self.config.dtype)
        cache = KVCache(k=layer_cache.k, v=layer_cache.v, key_valid=key_valid, length=cache.length + seq,
                        next_position=cache.next_position + seq)
        return (*self._heads(hidden), cache)

    @staticmethod
    def _check_room(cache: KVCache, seq: int) -> None:
        if isinstance(cache.length, jax.core.Tracer):
            return  # inside jit the caller sized the cache (see lwm_core.sampling)
        if int(cache.length) + seq > cache.max_length:
            raise LWMError(f"KV cache full: {int(cache.length)} + {seq} tokens exceed its {cache.max_length} "
                           "slots; create it with a larger max_length")

    # ---------------------------------------------------------------- parameters
    def params_dict(self) -> dict[str, np.ndarray]:
        """Weights as LWM's flat checkpoint dict: key -> numpy array (scanned layout, whatever
        `scan_layers` says about how this model runs them)."""
        return checkpoint_dict(nnx.state(self, nnx.Param))

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict[str, np.ndarray]) -> LWMModel:
        """Build a model from LWM's flat checkpoint dict (scanned layout) without initialising
        random weights first."""
        from lwm_core.checkpoint import check_shapes

        check_shapes(params, param_shapes(config))
        model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
        dtype = jnp.dtype(config.param_dtype)

        def value(path):
            key, layer = _checkpoint_key(path)
            array = params[key] if layer is None else params[key][layer]
            return jnp.asarray(array, dtype)

        flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
        nnx.update(model, nnx.from_flat_state([(path, var.replace(value(path))) for path, var in flat]))
        return model


_UNSCANNED = ("transformer", "h", "layers")


def checkpoint_dict(state: nnx.State) -> dict[str, np.ndarray]:
    """A model's parameter State (or its gradients) -> LWM's flat checkpoint dict, scanned layout."""
    params, per_layer = {}, {}
    for path, var in nnx.to_flat_state(state):
        key, layer = _checkpoint_key(path)
        if layer is None:
            params[key] = np.asarray(var[...])
        else:
            per_layer.setdefault(key, {})[layer] = np.asarray(var[...])
    for key, layers in per_layer.items():
        params[key] = np.stack([layers[i] for i in range(len(layers))])
    return params


def _checkpoint_key(path: tuple) -> tuple[str, int | None]:
    """NNX state path -> (LWM scanned checkpoint key, layer index or None). Unscanned layers live at
    transformer/h/layers/<i>/...; their checkpoint key is the scanned one, indexed by layer."""
    if tuple(path[:3]) == _UNSCANNED:
        return "/".join(("transformer", "h", "scan_decoder", *map(str, path[4:]))), int(path[3])
    return "/".join(map(str, path)), None


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape for a config (scanned layout), computed with `nnx.eval_shape` (no memory)."""
    abstract = nnx.eval_shape(lambda: LWMModel(config.replace(scan_layers=True), rngs=nnx.Rngs(0)))
    return {"/".join(map(str, path)): tuple(var.shape)
            for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def count_params(config: ModelConfig) -> int:
    return int(sum(np.prod(s) for s in param_shapes(config).values()))
