"""The KV cache: sharded, sized in buckets, written in place one layer at a time.

    cache = init_cache(config, batch_size=2, length=bucket_length(prompt + new, multiple=sp), mesh=mesh)

Keys and values of every layer live in one array each, heads first so attention reads a layer's
cache without a transpose: k, v [L, B, H, S, Dh], laid out by `lwm_core.mesh.CACHE_AXES`
(batch over dp/fsdp, heads over tp, cache slots over sp). A step writes its new tokens into slots
[length, length + T) of one layer with a dynamic-update-slice of T slots, inside the layer loop,
so there is never a second stacked copy of the cache; on an sp mesh only the device that owns a
slot writes it, with no collective.

Slots are shared by the rows of a batch (one `length`); a row's padding slots are False in
`key_valid`, and `next_position` [B] is each row's rotary position of its next token.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError, raise_if
from lwm_core.mesh import CACHE_AXES, axis_size, current_mesh, logical_to_spec, seq_axis


class KVCache(NamedTuple):
    """Decoding state; see the module docstring."""

    k: jax.Array  # [L, B, H, S, Dh]
    v: jax.Array  # [L, B, H, S, Dh]
    key_valid: jax.Array  # [B, S] bool
    length: jax.Array  # int32 scalar: slots used (same for every row)
    next_position: jax.Array  # [B] int32

    @property
    def max_length(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


def bucket_length(needed: int, *, multiple: int = 1, minimum: int = 256) -> int:
    """The cache length to allocate for `needed` slots: the smallest of 2^k and 3 * 2^(k-1) (at
    least `minimum`) that holds them, rounded up to `multiple` (sp x a chunk size). Prompts of many
    lengths share a few buckets, so one compilation serves them all, and no bucket wastes more than
    a third of itself."""
    if needed < 1:
        raise LWMError(f"a KV cache needs at least one slot, got {needed}")
    size = max(minimum, 2)
    while True:
        for candidate in (size, size + size // 2):  # 256, 384, 512, 768, 1024, ...
            if candidate >= needed:
                return -(-candidate // multiple) * multiple
        size *= 2


def cache_spec(config: ModelConfig, batch_size: int, length: int, mesh) -> P:
    """PartitionSpec of k and v [L, B, H, S, Dh] on `mesh` by `CACHE_AXES` (checks what must divide)."""
    shape = (config.num_hidden_layers, batch_size, config.num_attention_heads, length, config.head_dim)
    check_mesh(config, length, mesh)
    return logical_to_spec(_heads_first(CACHE_AXES), mesh, shape)


def _heads_first(axes):  # CACHE_AXES name the dims of [L, B, S, H, Dh]; the array is [L, B, H, S, Dh]
    layers, batch, slots, heads, head_dim = axes
    return (layers, batch, heads, slots, head_dim)


def check_mesh(config: ModelConfig, length: int, mesh) -> None:
    """One-line errors for a mesh that cannot hold this model's cache."""
    if mesh is None:
        return
    sp, tp = axis_size(mesh, seq_axis()), axis_size(mesh, "tp")
    if length % sp:
        raise LWMError(f"a KV cache of {length} slots does not divide over sp={sp} devices; use a length that "
                       f"is a multiple of {sp} (lwm_core.cache.bucket_length(n, multiple={sp}))")
    if config.num_attention_heads % tp:
        raise LWMError(f"{config.num_attention_heads} attention heads do not divide over tp={tp} devices; "
                       "pick a mesh whose tp divides the head count")


def init_cache(config: ModelConfig, batch_size: int, length: int, *, mesh=None, dtype=None) -> KVCache:
    """An empty cache of `length` slots per row, placed on `mesh` (argument or `jax.set_mesh`)."""
    if length > config.max_sequence_length:
        raise LWMError(f"a KV cache of {length} tokens exceeds max_sequence_length {config.max_sequence_length}; "
                       "shorten the prompt or generation, or load the model with a longer max_sequence_length")
    mesh = current_mesh(mesh)
    shape = (config.num_hidden_layers, batch_size, config.num_attention_heads, length, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    kv_sharding = valid_sharding = None
    if mesh is not None:
        spec = cache_spec(config, batch_size, length, mesh)
        kv_sharding, valid_sharding = spec, P(spec[1], spec[3])
        if isinstance(mesh, jax.sharding.Mesh):
            kv_sharding, valid_sharding = NamedSharding(mesh, spec), NamedSharding(mesh, valid_sharding)
    # made on their shards: a long cache never exists whole on one device
    zeros = _zeros(shape, dtype, kv_sharding, mesh)
    valid = _zeros((batch_size, length), jnp.dtype(bool), valid_sharding, mesh)()
    return KVCache(k=zeros(), v=zeros(), key_valid=valid, length=jnp.zeros((), jnp.int32),
                   next_position=jnp.zeros((batch_size,), jnp.int32))


@functools.lru_cache(maxsize=64)
def _zeros(shape, dtype, sharding, mesh):
    """One jitted zeros per shape/sharding (`mesh` keys the cache): a fresh lambda each call recompiled
    it for every cache, ~40 ms per prefill on CPU."""
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def check_room(cache: KVCache, new_tokens: int) -> None:
    """Refuse to write past the end of the cache: eagerly, or from inside jit when it runs."""
    raise_if(cache.length + new_tokens > cache.max_length,
             "KV cache full: {} + {} tokens exceed its {} slots; create it with a larger length "
             "(lwm_core.cache.bucket_length)", cache.length, new_tokens, cache.max_length)


def write_layer(cache: jax.Array, new: jax.Array, layer, index, *, mesh=None) -> jax.Array:
    """Write new keys or values [B, T, H, Dh] into slots [index, index + T) of `layer` of the cache
    [L, B, H, S, Dh], in place. On an sp mesh every device writes only the slots it owns."""
    new = jnp.swapaxes(new.astype(cache.dtype), 1, 2)  # [B, H, T, Dh]
    mesh = current_mesh(mesh)
    sp = axis_size(mesh, seq_axis())
    if sp == 1:
        return lax.dynamic_update_slice(cache, new[None], (layer, 0, 0, index, 0))
    slots = cache.shape[3] // sp
    spec = logical_to_spec(_heads_first(CACHE_AXES), mesh, cache.shape)
    new_spec = P(None, spec[1], spec[2], None, None)

    def per_device(cache, new, layer, index):
        return _write_owned(cache, new[0], layer, index - lax.axis_index(seq_axis()) * slots)

    return jax.shard_map(per_device, mesh=mesh, in_specs=(spec, new_spec, P(), P()), out_specs=spec,
                         check_vma=False)(cache, new[None], jnp.asarray(layer, jnp.int32),
                                          jnp.asarray(index, jnp.int32))


def _write_owned(cache, new, layer, start):
    """Write new [B, H, T, Dh] at local slot `start` (may be negative or past the end) of one shard
    [L, B, H, S_l, Dh]: a window of min(T, S_l) slots is read, the owned new tokens merged in, and
    the window written back. No branch, so the cache is updated in place whoever owns the slots."""
    local, count = cache.shape[3], new.shape[2]
    width = min(count, local)
    at = jnp.clip(start, 0, local - width)
    old = lax.dynamic_slice(cache, (layer, 0, 0, at, 0), (1, *cache.shape[1:3], width, cache.shape[4]))[0]
    source = at + jnp.arange(width) - start  # [W] index into `new` of each window slot
    owned = (source >= 0) & (source < count)
    taken = jnp.take(new, jnp.clip(source, 0, count - 1), axis=2)  # [B, H, W, Dh]
    window = jnp.where(owned[None, None, :, None], taken, old)
    return lax.dynamic_update_slice(cache, window[None], (layer, 0, 0, at, 0))


def layer_view(cache: jax.Array, layer) -> jax.Array:
    """One layer's keys or values [B, H, S, Dh] of the cache [L, B, H, S, Dh]."""
    return lax.dynamic_index_in_dim(cache, layer, axis=0, keepdims=False)
