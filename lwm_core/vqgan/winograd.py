"""3x3 convolutions by Winograd F(4x4, 3x3), run one band of rows at a time so they stay in cache.

A 3x3 SAME convolution costs 9 multiply-adds per output value and input channel. Winograd's minimal
filtering computes a 4x4 output tile from a 6x6 input tile with 36 element-wise products, i.e. 2.25
instead of 9: each input tile d and each kernel g are transformed (V = B^T d B, U = G g G^T), the
36 tile positions become 36 independent [tiles, C_in] x [C_in, C_out] matmuls M = V U, and the
output is Y = A^T M A. The transforms are additions with small constants; the matmuls carry the
work. On a CPU the catch is memory, not arithmetic: V and M are 2.25x the size of the input, and a
whole-image V/M round trip through RAM costs more than the multiplies saved. So the convolution
runs as a loop over bands of ~256 tiles (`_band_shape`: tile rows of one frame, or several whole
small frames), each band's V and M living in cache, the halo rows, zero padding and nearest-x2
upsampling made inside the loop, and each band's output written in place into the result (which
starts as the residual when there is one, so a ResNet's `x + conv(h)` costs no extra pass).

Interpolation points 0, 1, -1, 1/2, -2 (and infinity) rather than the usual +-2: in fp32 their
largest error over a 256-channel conv is ~2.4e-5 against a float64 reference, vs ~6.9e-5 for +-2
(direct convolution: ~3e-6). The matrices below are the Toom-Cook construction for those points
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016); the tests check the
identity A^T[(G g) * (B^T d)] = correlation(d, g) in float64 and the conv against lax.conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TILE = 4  # output tile side m
ALPHA = TILE + 2  # input tile side m + r - 1

# B^T [6, 6], G [6, 3], A^T [4, 6] for points (0, 1, -1, 1/2, -2, inf).
BT = np.array([[1, -3 / 2, -2, 3 / 2, 1, 0],
               [0, -1, 1 / 2, 5 / 2, 1, 0],
               [0, 1, -5 / 2, 1 / 2, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 1 / 2, -1, -1 / 2, 1, 0],
               [0, 1, -3 / 2, -2, 3 / 2, 1]], np.float64)
G = np.array([[1, 0, 0],
              [1 / 3, 1 / 3, 1 / 3],
              [-1 / 3, 1 / 3, -1 / 3],
              [-16 / 15, -8 / 15, -4 / 15],
              [1 / 15, -2 / 15, 4 / 15],
              [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 1 / 2, -2, 0],
               [0, 1, 1, 1 / 4, 4, 0],
               [0, 1, -1, 1 / 8, -8, 1]], np.float64)

# Tiles per band: enough rows for the matmuls to run at full speed, few enough that a band's
# V and M (36 x tiles x channels each) stay in the 2-32 MiB of cache of a server core.
BAND_TILES = 256


def supports(height: int, width: int) -> bool:
    """Whether an output of this size splits into 4x4 tiles."""
    return height % TILE == 0 and width % TILE == 0 and height > 0 and width > 0


def _combine(coefs: np.ndarray, terms: list[jax.Array]) -> jax.Array:
    """sum_i coefs[i] * terms[i], skipping zero coefficients and multiplications by +-1."""
    out = None
    for c, t in zip(coefs, terms, strict=True):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * float(c))
        out = v if out is None else out + v
    return out


def transform_kernel(kernel: jax.Array) -> jax.Array:
    """U = G g G^T for a [3, 3, C_in, C_out] HWIO kernel -> [36, C_in, C_out].

    Written as weighted sums of the nine [C_in, C_out] taps (one fused pass) rather than an einsum,
    which XLA CPU runs as transposes around two dots: ~3x the memory traffic, per call."""
    taps = [[kernel[i, j].astype(jnp.float32) for j in range(3)] for i in range(3)]
    by_rows = [[_combine(G[a], [taps[i][j] for i in range(3)]) for j in range(3)] for a in range(ALPHA)]
    u = [_combine(G[b], by_rows[a]) for a in range(ALPHA) for b in range(ALPHA)]
    return jnp.stack(u).astype(kernel.dtype)


def _band_shape(frames: int, tile_rows: int, tile_cols: int) -> tuple[int, int]:
    """(frames, tile rows) per band: the most tile rows of one frame within BAND_TILES, then as
    many whole frames of those as fit (small images: several frames a band)."""
    def largest_divisor(n: int, limit: int) -> int:
        return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, limit))
    rows = largest_divisor(tile_rows, BAND_TILES // tile_cols)
    return largest_divisor(frames, BAND_TILES // (rows * tile_cols)), rows


def _fetch_band(x: jax.Array, frame: jax.Array, frames: int, first: jax.Array, count: int) -> jax.Array:
    """Rows first .. first+count-1 of frames frame .. frame+frames-1 of x, zero outside the image,
    padded by one zero column each side: [frames, count, W + 2, C]."""
    _, h, w, c = x.shape
    if count > h:  # whole frames: count is h + 2 (a band's rows divide h, so nothing in between)
        raw = jax.lax.dynamic_slice_in_dim(x, frame, frames)
        band = jnp.pad(raw, ((0, 0), (1, 1), (0, 0), (0, 0)))
    else:  # read in bounds, then shift by the rows that fall outside into zero padding
        clamped = jnp.clip(first, 0, h - count)
        raw = jax.lax.dynamic_slice(x, (frame, clamped, 0, 0), (frames, count, w, c))
        band = jax.lax.dynamic_slice_in_dim(jnp.pad(raw, ((0, 0), (1, 1), (0, 0), (0, 0))),
                                            first - clamped + 1, count, axis=1)
    return jnp.pad(band, ((0, 0), (0, 0), (1, 1), (0, 0)))


def _taps(array: jax.Array, axis: int, tiles: int, scale: int) -> list[jax.Array]:
    """The 6 strided views along `axis` that tap i of every tile reads: tile t, tap i reads
    (upsampled) position 4t + i, which is source position (4t + i + scale - 1) // scale."""
    step = TILE // scale
    return [jax.lax.slice_in_dim(array, (i + scale - 1) // scale, (i + scale - 1) // scale + step * (tiles - 1) + 1,
                                 step, axis) for i in range(ALPHA)]


def _input_transform(band: jax.Array, rows: int, cols: int, scale: int) -> jax.Array:
    """V = B^T d B for every 6x6 tile of the (upsampled by `scale`) band -> [36, tiles, C].

    `band` [F, rows', W' + 2, C] holds the source rows and columns (padded) that the 6x6 tiles of
    F x `rows` x `cols` output tiles read; with scale 2 the nearest-upsampled band is never built.
    Each pass handles all six tile rows (or columns) at once, so a band is a handful of XLA ops;
    the row pass is materialised (the barrier) so the column pass does not recompute it."""
    by_rows = jnp.stack([_combine(BT[a], _taps(band, 1, rows, scale)) for a in range(ALPHA)])  # [6, F, r, W', C]
    by_rows = jax.lax.optimization_barrier(by_rows)
    col_taps = _taps(by_rows, 3, cols, scale)  # [6 (a), F, r, c, C] each
    v = jnp.stack([_combine(BT[b], col_taps) for b in range(ALPHA)], axis=1)  # [6 (a), 6 (b), F, r, c, C]
    return v.reshape(ALPHA * ALPHA, -1, band.shape[-1])


def _output_transform(m: jax.Array, frames: int, rows: int, cols: int) -> jax.Array:
    """Y = A^T M A: [36, F*rows*cols, K] -> [F, 4*rows, 4*cols, K]."""
    k = m.shape[-1]
    m = m.reshape(ALPHA, ALPHA, frames, rows, cols, k)
    by_rows = jnp.stack([_combine(AT[p], [m[a] for a in range(ALPHA)]) for p in range(TILE)])  # [4, 6, F, r, c, K]
    by_rows = jax.lax.optimization_barrier(by_rows)
    y = jnp.stack([_combine(AT[q], [by_rows[:, b] for b in range(ALPHA)]) for q in range(TILE)],
                  axis=-2)  # [4 (p), F, r, c, 4 (q), K]
    return y.transpose(1, 2, 0, 3, 4, 5).reshape(frames, TILE * rows, TILE * cols, k)


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *,
                     residual: jax.Array | None = None, upsample: bool = False,
                     band_rows: int | None = None) -> jax.Array:
    """conv3x3_SAME(x') + bias (+ residual), x' = nearest-x2 upsampled x when `upsample`.

    x [N, H, W, C_in], kernel [3, 3, C_in, C_out] (HWIO) -> [N, sH, sW, C_out]; the output size
    must divide by 4 (`supports`). `band_rows` (tile rows of one frame per band) is for tests and
    tuning."""
    n, h, w, _ = x.shape
    scale = 2 if upsample else 1
    out_h, out_w, c_out = h * scale, w * scale, kernel.shape[-1]
    if not supports(out_h, out_w):
        raise ValueError(f"Winograd F(4x4, 3x3) needs an output size divisible by 4, got {out_h}x{out_w}")
    tile_rows, tile_cols = out_h // TILE, out_w // TILE
    if band_rows is not None and tile_rows % band_rows:
        raise ValueError(f"band_rows {band_rows} must divide the {tile_rows} tile rows")
    frames, rows = (1, band_rows) if band_rows is not None else _band_shape(n, tile_rows, tile_cols)
    bands = tile_rows // rows  # per frame group
    u = jax.lax.optimization_barrier(transform_kernel(kernel))  # computed once, not per band
    b = jnp.zeros((c_out,), x.dtype) if bias is None else bias.astype(x.dtype)
    out = jnp.zeros((n, out_h, out_w, c_out), x.dtype) if residual is None else residual.astype(x.dtype)

    def band(i, out):
        frame, start = (i // bands) * frames, (i % bands) * rows * TILE  # first frame and output row
        band_in = _fetch_band(x, frame, frames, start // scale - 1, rows * TILE // scale + 2)
        m = jnp.einsum("tpc,tck->tpk", _input_transform(band_in, rows, tile_cols, scale), u)
        y = _output_transform(m, frames, rows, tile_cols) + b
        if residual is not None:
            y = y + jax.lax.dynamic_slice(out, (frame, start, 0, 0), y.shape)
        return jax.lax.dynamic_update_slice(out, y, (frame, start, 0, 0))

    return jax.lax.fori_loop(0, (n // frames) * bands, band, out)
