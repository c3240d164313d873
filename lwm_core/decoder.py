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
from lwm_core.mesh import ACTIVATION_AXES, constrain


class CacheStep(NamedTuple):
    """What a cached step needs besides the hidden states: where to write, and who may attend."""

    index: jax.Array  # int32 scalar: cache slot of the first new token
    q_slots: jax.Array  # [T] int32: cache slot of each new token (attends slots <= its own)
    key_valid: jax.Array  # [B, S] bool: slots holding real tokens, the new ones included
    # Static, or None: the tokens are packed row groups [1, N] (`attention.RowGroup`, `LWMModel.extend_groups`)
    groups: tuple | None = None


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = (), mesh=None):
        d, std, pd = config.hidden_size, config.initializer_range, config.param_dtype
        qkv = dict(std=std, param_dtype=pd, rngs=rngs, stack=stack, axes=("embed", "heads"))
        self.wq = Dense(d, d, **qkv)
        self.wk = Dense(d, d, **qkv)
        self.wv = Dense(d, d, **qkv)
        self.wo = Dense(d, d, std=std, param_dtype=pd, rngs=rngs, stack=stack, axes=("heads", "embed"))
        self.config = config
        self.mesh = mesh

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

    def __call__(self, x, cos, sin, *, segment_ids=None, attention_mask=None, positions=None):
        cfg = self.config
        q, k, v = self.project(x, cos, sin)
        out = attention.dot_product_attention(
            q, k, v, causal=True, segment_ids=segment_ids, mask=attention_mask,
            impl=cfg.attention_impl, layout=cfg.sequence_layout, mesh=self.mesh, positions=positions,
            query_chunk_size=cfg.scan_query_chunk_size, key_chunk_size=cfg.scan_key_chunk_size)
        return self.output(out), (k, v)

    def extend(self, x, cos, sin, k_all, v_all, layer, step: CacheStep):
        """New tokens [B, T, D] through this layer against the cache of every layer k_all, v_all
        [L, B, H, S, Dh]: their keys/values are written into slots step.q_slots of `layer` in place,
        then the queries attend the layer's cache. Returns the output and the updated caches."""
        cfg = self.config
        q, k, v = self.project(x, cos, sin)
        chunks = dict(query_chunk_size=cfg.scan_query_chunk_size, key_chunk_size=cfg.scan_key_chunk_size)
        if step.groups is not None:
            out, k_all, v_all = attention.extend_groups_attention(q, k, v, k_all, v_all, layer, step.index,
                                                                  step.groups, step.key_valid, **chunks)
        else:
            out, k_all, v_all = attention.extend_attention(q, k, v, k_all, v_all, layer, step.index, step.q_slots,
                                                           step.key_valid, mesh=self.mesh, **chunks)
        return self.output(out), k_all, v_all


class FeedForward(nnx.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), optionally over sequence chunks (LWM's scan_mlp)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        d, f, std, pd = config.hidden_size, config.intermediate_size, config.initializer_range, config.param_dtype
        self.w1 = Dense(d, f, std=std, param_dtype=pd, rngs=rngs, stack=stack, axes=("embed", "mlp"))
        self.w2 = Dense(f, d, std=std, param_dtype=pd, rngs=rngs, stack=stack, axes=("mlp", "embed"))
        self.w3 = Dense(d, f, std=std, param_dtype=pd, rngs=rngs, stack=stack, axes=("embed", "mlp"))
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
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = (), mesh=None):
        self.attention = Attention(config, rngs=rngs, stack=stack, mesh=mesh)
        self.feed_forward = FeedForward(config, rngs=rngs, stack=stack)
        self.attention_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps,
                                      param_dtype=config.param_dtype, stack=stack)
        self.ffn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps,
                                param_dtype=config.param_dtype, stack=stack)
        self.config = config

    def __call__(self, x, cos, sin, *, segment_ids=None, attention_mask=None, positions=None):
        dtype = self.config.dtype
        h, kv = self.attention(self.attention_norm(x, dtype), cos, sin,
                               segment_ids=segment_ids, attention_mask=attention_mask, positions=positions)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x, dtype)), kv

    def extend(self, x, cos, sin, k_all, v_all, layer, step: CacheStep):
        dtype = self.config.dtype
        h, k_all, v_all = self.attention.extend(self.attention_norm(x, dtype), cos, sin, k_all, v_all, layer, step)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x, dtype)), k_all, v_all


class LayerStack(nnx.Module):
    """The decoder layers: with `scan_layers` (default) one `DecoderLayer` whose weights carry a
    leading layer axis, run by `lax.scan`; without, one `DecoderLayer` per layer, run in a Python loop.

    Unscanned layers compile once per layer but read each weight in place; XLA on CPU copies the
    per-layer slice of a stacked weight inside a scan, which triples the memory traffic of
    bandwidth-bound one-token decoding (see bench/decode.py).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh=None):
        if config.scan_layers:
            self.scan_decoder = DecoderLayer(config, rngs=rngs, stack=(config.num_hidden_layers,), mesh=mesh)
        else:
            self.layers = nnx.List([DecoderLayer(config, rngs=rngs, mesh=mesh)
                                    for _ in range(config.num_hidden_layers)])
        self.config = config
        self.mesh = mesh

    def _remat(self, fn):
        policy = self.config.remat_block
        if not policy:
            return fn
        return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, policy), prevent_cse=False)

    def _loop(self, step, carry):
        """carry = step(layer, index, carry) for every layer, by lax.scan (scanned layers, where the
        layer index is traced) or a Python loop (unscanned, where it is a constant)."""
        if not self.config.scan_layers:
            for i, layer in enumerate(self.layers):
                carry = self._remat(lambda c, layer=layer, i=i: step(layer, i, c))(carry)
            return carry
        graphdef, state = nnx.split(self.scan_decoder)

        def body(carry, xs):
            layer_state, index = xs
            return step(nnx.merge(graphdef, layer_state), index, carry), None

        layers = jnp.arange(self.config.num_hidden_layers, dtype=jnp.int32)
        return jax.lax.scan(self._remat(body), carry, (state, layers))[0]

    def __call__(self, x, cos, sin, *, segment_ids=None, attention_mask=None, positions=None):
        """x [B, T, D] -> [B, T, D] through every layer (the full forward pass, no cache). `positions`:
        the tokens are in a ring layout's order (see `attention.ring_attention`)."""

        def step(layer, _, h):
            h = constrain(h, ACTIVATION_AXES, self.mesh)
            return layer(h, cos, sin, segment_ids=segment_ids, attention_mask=attention_mask, positions=positions)[0]

        return self._loop(step, x)

    def extend(self, x, cos, sin, k_all, v_all, step: CacheStep):
        """New tokens x [B, T, D] through every layer against the cache [L, B, H, S, Dh], which is
        updated in place (carried through the loop, one layer written at a time)."""

        def layer_step(layer, index, carry):
            h, k_all, v_all = carry
            h = constrain(h, ACTIVATION_AXES, self.mesh)
            return layer.extend(h, cos, sin, k_all, v_all, index, step)

        return self._loop(layer_step, (x, k_all, v_all))
