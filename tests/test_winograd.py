"""Winograd F(4x4, 3x3) convolution against an independent float64 reference convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm_core.vqgan.winograd import AT, BT, G, supports, winograd_conv3x3


def _reference(x, kernel, bias, residual=None, upsample=False):
    """conv3x3 SAME in float64 numpy: nine shifted matmuls over the zero-padded image."""
    x = np.asarray(x, np.float64)
    if upsample:
        x = x.repeat(2, axis=1).repeat(2, axis=2)
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = np.asarray(kernel, np.float64)
    y = sum(padded[:, i:i + h, j:j + w] @ k[i, j] for i in range(3) for j in range(3)) + np.asarray(bias, np.float64)
    return y if residual is None else y + np.asarray(residual, np.float64)


def _data(n, h, w, c, k, seed=0, scale=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, k)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    residual = rng.standard_normal((n, h * scale, w * scale, k)).astype(np.float32)
    return x, kernel, bias, residual


def test_matrices_compute_a_1d_correlation_exactly():
    """A^T [(G g) * (B^T d)] = correlation of a 6-sample d with a 3-tap g: 4 outputs."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal(6), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ g for i in range(4)])
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), want, rtol=0, atol=1e-12)


# fp32 error bound: Winograd's transforms scale values up and down (entries up to 8 and 16/15), so
# it rounds more than a direct conv. Measured max |error| vs float64 at these sizes: ~6e-6 (direct
# lax.conv: ~8e-7); at 256 channels ~2.4e-5 (direct ~3e-6). 2e-5 here leaves 3x.
ATOL = 2e-5


@pytest.mark.parametrize("band_rows", [1, 2, None])  # several bands a frame, and the default
@pytest.mark.parametrize("with_residual", [False, True])
def test_conv_matches_reference(band_rows, with_residual):
    x, kernel, bias, residual = _data(2, 16, 24, 32, 24)
    out = jax.jit(lambda x, k, b, r: winograd_conv3x3(x, k, b, residual=r if with_residual else None,
                                                       band_rows=band_rows))(x, kernel, bias, residual)
    want = _reference(x, kernel, bias, residual if with_residual else None)
    assert out.shape == want.shape == (2, 16, 24, 24)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("band_rows", [1, 2, 4, None])  # 2: bands meet mid-pixel-pair; None: 3 frames a band
def test_upsampling_conv_matches_reference(band_rows):
    x, kernel, bias, residual = _data(3, 8, 6, 16, 16, seed=1, scale=2)  # -> 16 x 12 output
    out = winograd_conv3x3(jnp.asarray(x), kernel, bias, upsample=True, band_rows=band_rows)
    want = _reference(x, kernel, bias, upsample=True)
    assert out.shape == (3, 16, 12, 16)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=ATOL)


def test_bands_of_several_frames():
    x, kernel, bias, residual = _data(8, 32, 32, 8, 8, seed=4)  # 64 tiles a frame: 4 frames a band, 2 bands
    out = winograd_conv3x3(jnp.asarray(x), kernel, bias, residual=residual)
    np.testing.assert_allclose(np.asarray(out), _reference(x, kernel, bias, residual), rtol=0, atol=ATOL)


def test_smallest_frames_whole_frame_bands():
    x, kernel, bias, _ = _data(2, 4, 4, 8, 8, seed=2)  # one 4x4 tile a frame
    np.testing.assert_allclose(np.asarray(winograd_conv3x3(jnp.asarray(x), kernel, bias)),
                               _reference(x, kernel, bias), rtol=0, atol=ATOL)
    small, kernel, bias, _ = _data(2, 4, 4, 8, 8, seed=5)  # 4x4 -> 8x8 in bands of 1 tile row:
    for band_rows in (1, 2):  # 4 source rows a band (as many as the image), then whole frames
        np.testing.assert_allclose(
            np.asarray(winograd_conv3x3(jnp.asarray(small), kernel, bias, upsample=True, band_rows=band_rows)),
            _reference(small, kernel, bias, upsample=True), rtol=0, atol=ATOL)
    up, kernel, bias, _ = _data(1, 2, 2, 8, 8, seed=3)  # 2x2 -> one 4x4 tile
    np.testing.assert_allclose(np.asarray(winograd_conv3x3(jnp.asarray(up), kernel, bias, upsample=True)),
                               _reference(up, kernel, bias, upsample=True), rtol=0, atol=ATOL)


def test_sizes_that_do_not_tile_are_refused():
    assert supports(8, 12) and not supports(6, 8) and not supports(8, 10)
    x, kernel, bias, _ = _data(1, 6, 8, 4, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        winograd_conv3x3(jnp.asarray(x), kernel, bias)
    with pytest.raises(ValueError, match="band_rows 3 must divide"):
        winograd_conv3x3(jnp.asarray(_data(1, 8, 8, 4, 4)[0]), kernel, bias, band_rows=3)


@pytest.mark.parametrize("size, channels, upsample, expect", [
    (32, 128, False, True),    # big enough: Winograd (a loop over bands)
    (16, 128, False, False),   # too few pixels
    (32, 32, False, False),    # too few channels
    (32, 128, True, True),     # upsampling conv reads the 32x32 input
    (16, 128, True, False),
])
def test_auto_picks_winograd_for_big_convs_on_cpu(size, channels, upsample, expect):
    from flax import nnx

    from lwm_core.vqgan.model import conv3x3

    layer = nnx.Conv(channels, channels, (3, 3), rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda v: conv3x3(layer, v, upsample=upsample, conv="auto"))(x))
    assert ("scan" in jaxpr or "while" in jaxpr) == expect  # the band loop
    assert ("conv_general_dilated" in jaxpr) == (not expect)
