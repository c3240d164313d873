"""LWM's vision token stream: codes + <eof> per frame, <eov> after the last."""

import numpy as np
import pytest

from lwm_core import frames_to_vision_tokens
from lwm_core.errors import LWMError
from lwm_core.vision_tokens import EOF_TOKEN, EOV_TOKEN, vision_tokens_to_frames


def test_layout_on_a_literal_example():
    codes = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]])  # [3, 2, 2]
    np.testing.assert_array_equal(frames_to_vision_tokens(codes),
                                  [1, 2, 3, 4, 8192, 5, 6, 7, 8, 8192, 9, 10, 11, 12, 8193])
    np.testing.assert_array_equal(frames_to_vision_tokens(codes[:1]), [1, 2, 3, 4, 8193])


def test_full_size_frames_and_inverse():
    codes = np.random.default_rng(0).integers(0, 8192, (4, 16, 16)).astype(np.uint16)
    tokens = frames_to_vision_tokens(codes)
    assert tokens.dtype == np.int32 and tokens.shape == (4 * 257,)
    assert (tokens[256:-1:257] == EOF_TOKEN).all() and tokens[-1] == EOV_TOKEN
    np.testing.assert_array_equal(tokens[257:257 + 16], codes[1, 0])  # row-major
    np.testing.assert_array_equal(vision_tokens_to_frames(tokens).reshape(4, 16, 16), codes)


def test_bad_codes():
    with pytest.raises(LWMError):
        frames_to_vision_tokens(np.full((1, 2, 2), 8192))
    with pytest.raises(LWMError):
        frames_to_vision_tokens(np.zeros((0, 16, 16)))
    with pytest.raises(LWMError):
        vision_tokens_to_frames(np.arange(10), tokens_per_frame=4)
