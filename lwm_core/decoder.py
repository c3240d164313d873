"""One pre-norm decoder layer (attention + SwiGLU MLP) and the scanned stack of them.

Layer weights are stored stacked, one array per weight with a leading layer axis, under LWM's
scanned key names (`transformer/h/scan_decoder/...`); the stack runs them with `jax.lax.scan`, so
compile time does not grow with depth.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lwm_core import attention
from lwm_core.config import ModelConfig
from lwm_core.layers import Dense, RMSNorm, apply_rope


class LayerCache(NamedTuple):
    """Keys and values of every layer: k, v [L, B, S, H, D]."""

    k: jax.Array
    v: jax.Array


class DecodeContext(NamedTuple):
    """What a cached step needs besides the hidden states: where to write, and who may attend."""

    index: jax.Array  # int32 scalar: cache slot of the first new token
    mask: jax.Array  # [B, T, S] bool: cache slots each new token attends to


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        d, std, pd = config.hidden_size, config.initializer_range, config.param_dtype
        self.wq = Dense(d, d, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.wk = Dense(d, d, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.wv = Dense(d, d, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.wo = Dense(d, d, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.config = config

    def project(self, x, cos, sin):
        """[B, T, D] -> q, k, v [B, T, H, Dh] with rotary embeddings on q and k."""
        cfg, dtype = self.config, self.config.dtype
        split = lambda t: t.reshape(*t.shape[:2], cfg.num_attention_heads, cfg.head_dim)
        q = apply_rope(split(self.wq(x, dtype)), cos, sin)
        k = apply_rope(split(self.wk(x, dtype)), cos, sin)
        return q, k, split(self.wv(x, dtype))

    def output(self, out):
        """[B, T, H, Dh] -> [B, T, D]."""
        return self.wo(out.reshape(*out.shape[:2], -1), self.config.dtype)

    def __call__(self, x, cos, sin, *, segment_ids=None, attention_mask=None):
        cfg = self.config
        q, k, v = self.project(x, cos, sin)
        out = attention.dot_product_attention(
            q, k, v, causal=True, segment_ids=segment_ids, mask=attention_mask,
            impl=cfg.attention_impl, layout=cfg.sequence_layout,
            query_chunk_size=cfg.scan_query_chunk_size, key_chunk_size=cfg.scan_key_chunk_size)
        return self.output(out), (k, v)

    def decode(self, x, cos, sin, k_cache, v_cache, ctx: DecodeContext):
        """New tokens [B, T, D] against this layer's cache [B, S, H, Dh]; returns output and new cache."""
        q, k, v = self.project(x, cos, sin)
        k_cache = attention.update_cache(k_cache, k, ctx.index)
        v_cache = attention.update_cache(v_cache, v, ctx.index)
        out = attention.decode_attention(q, k_cache, v_cache, ctx.mask)
        return self.output(out), (k_cache, v_cache)


class FeedForward(nnx.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), optionally over sequence chunks (LWM's scan_mlp)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        d, f, std, pd = config.hidden_size, config.intermediate_size, config.initializer_range, config.param_dtype
        self.w1 = Dense(d, f, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.w2 = Dense(f, d, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.w3 = Dense(d, f, std=std, param_dtype=pd, rngs=rngs, stack=stack)
        self.config = config

    def _mlp(self, x):
        dtype = self.config.dtype
        return self.w2(jax.nn.silu(self.w1(x, dtype)) * self.w3(x, dtype), dtype)

    def __call__(self, x):
        chunk = self.config.scan_mlp_chunk_size
        seq = x.shape[1]
        if not chunk or seq <= chunk:
            return self._mlp(x)
        # Chunk the sequence so that only [B, chunk, F] of the hidden activation lives at once.
        pad = -seq % chunk
        xp = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        chunks = xp.reshape(x.shape[0], -1, chunk, x.shape[-1]).swapaxes(0, 1)  # [C, B, chunk, D]
        out = jax.lax.map(jax.checkpoint(self._mlp), chunks)
        return out.swapaxes(0, 1).reshape(x.shape[0], -1, x.shape[-1])[:, :seq]


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        self.attention = Attention(config, rngs=rngs, stack=stack)
        self.feed_forward = FeedForward(config, rngs=rngs, stack=stack)
        self.attention_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps,
                                      param_dtype=config.param_dtype, stack=stack)
        self.ffn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps,
                                param_dtype=config.param_dtype, stack=stack)
        self.config = config

    def __call__(self, x, cos, sin, *, segment_ids=None, attention_mask=None):
        dtype = self.config.dtype
        h, kv = self.attention(self.attention_norm(x, dtype), cos, sin,
                               segment_ids=segment_ids, attention_mask=attention_mask)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x, dtype)), kv

    def decode(self, x, cos, sin, k_cache, v_cache, ctx: DecodeContext):
        dtype = self.config.dtype
        h, kv = self.attention.decode(self.attention_norm(x, dtype), cos, sin, k_cache, v_cache, ctx)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x, dtype)), kv


class LayerStack(nnx.Module):
    """The decoder layers: with `scan_layers` (default) one `DecoderLayer` whose weights carry a
    leading layer axis, run by `lax.scan`; without, one `DecoderLayer` per layer, run in a Python loop.

    Unscanned layers compile once per layer but read each weight in place; XLA on CPU copies the
    per-layer slice of a stacked weight inside a scan, which triples the memory traffic of
    bandwidth-bound one-token decoding (see bench/decode.py).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.scan_layers:
            self.scan_decoder = DecoderLayer(config, rngs=rngs, stack=(config.num_hidden_layers,))
        else:
            self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.config = config

    def _scan(self, step, x, xs):
        """Run `step(layer, x, xs_slice) -> (x, ys_slice)` over the layers; ys come back stacked."""
        policy = self.config.remat_block
        remat = (lambda f: jax.checkpoint(f, policy=getattr(jax.checkpoint_policies, policy), prevent_cse=False)
                 ) if policy else (lambda f: f)
        if not self.config.scan_layers:
            ys = []
            for i, layer in enumerate(self.layers):
                x, y = remat(lambda h, extra, layer=layer: step(layer, h, extra))(
                    x, jax.tree.map(lambda a, i=i: a[i], xs))
                ys.append(y)
            return x, jax.tree.map(lambda *a: jnp.stack(a), *ys)
        graphdef, state = nnx.split(self.scan_decoder)

        def body(carry, layer_and_xs):
            layer_state, extra = layer_and_xs
            return step(nnx.merge(graphdef, layer_state), carry, extra)

        return jax.lax.scan(remat(body), x, (state, xs))

    def __call__(self, x, cos, sin, *, segment_ids=None, attention_mask=None, return_kv=False):
        """x [B, T, D] -> [B, T, D]; with return_kv also the per-layer keys/values [L, B, T, H, Dh]."""

        def step(layer, h, _):
            h, kv = layer(h, cos, sin, segment_ids=segment_ids, attention_mask=attention_mask)
            return h, (kv if return_kv else None)

        x, kv = self._scan(step, x, None)
        return (x, LayerCache(*kv)) if return_kv else x

    def decode(self, x, cos, sin, cache: LayerCache, ctx: DecodeContext):
        def step(layer, h, layer_cache):
            return layer.decode(h, cos, sin, layer_cache[0], layer_cache[1], ctx)

        x, (k, v) = self._scan(step, x, (cache.k, cache.v))
        return x, LayerCache(k, v)
