"""Video/image reading, LWM's sampling and preprocessing, frame writing."""

import numpy as np
import pytest
from PIL import Image

from lwm_core.errors import LWMError
from lwm_core.video import load_media, preprocess_frames, read_video, sample_indices, write_frames

import cv2


def make_video(path, w=321, h=203, n=37, fps=10.0):
    """Moving shapes on a coloured background, written with OpenCV (the writer may trim odd sizes
    to even ones, as MPEG-4 requires)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        f = frames[t]
        f[:] = (20, 40 + t, 60)
        cv2.rectangle(f, (5 + 6 * t, 20), (45 + 6 * t, 70), (255, 40, 40), -1)
        cv2.circle(f, (160, 30 + 4 * t), 18, (40, 220, 90), -1)
    write_frames(frames, path, fps=fps)
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "shapes.mp4"
    return path, make_video(path)


def test_sampling_follows_lwm_linspace():
    np.testing.assert_array_equal(sample_indices(37, 10.0, max_n_frames=8),
                                  np.linspace(0, 36, 8, dtype=int))
    np.testing.assert_array_equal(sample_indices(5, 10.0, max_n_frames=8), np.arange(5))
    np.testing.assert_array_equal(sample_indices(37, 10.0, fps=2.0), [0, 5, 10, 15, 20, 25, 30, 35])
    np.testing.assert_array_equal(sample_indices(37, 10.0, fps=2.0, max_n_frames=3), [0, 15, 35])


def test_decord_and_opencv_return_the_same_frames(video):
    pytest.importorskip("decord")
    path, source = video
    a = load_media(path, max_n_frames=8, backend="decord")
    b = load_media(path, max_n_frames=8, backend="opencv")
    np.testing.assert_array_equal(a.indices, np.linspace(0, 36, 8, dtype=int))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.fps == pytest.approx(10.0) and b.fps == pytest.approx(10.0)
    assert a.num_source_frames == b.num_source_frames == 37
    assert a.frames.dtype == np.uint8 and a.frames.shape[1:] == b.frames.shape[1:]
    np.testing.assert_array_equal(a.frames, b.frames)
    h, w = a.frames.shape[1:3]
    # lossy codec: close to the source, and the frames really are the sampled ones (shapes move)
    err = np.abs(a.frames.astype(int) - source[a.indices, :h, :w].astype(int)).mean(axis=(1, 2, 3))
    assert (err < 6).all(), err
    wrong = np.abs(a.frames[1:].astype(int) - source[a.indices[:-1], :h, :w].astype(int)).mean()
    assert wrong > 3 * err.max()


def test_read_video_api_and_images(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (41, 67, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    frames, idx = read_video(tmp_path / "a.png")
    np.testing.assert_array_equal(frames, img[None])
    np.testing.assert_array_equal(idx, [0])


def test_preprocess_short_side_centre_crop_and_scale():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the centre third is white
    out = preprocess_frames(wide[None], size=64)
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    assert out[0, :, 8:56].mean() > 0.9  # the crop is the middle, which is white
    tall = preprocess_frames(np.full((1, 90, 30, 3), 255, np.uint8), size=16)
    np.testing.assert_allclose(tall, 1.0)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("this is not a video"), "not a readable video"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20), "not a readable video"),
])
def test_bad_videos_raise_one_line(tmp_path, make, message):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(LWMError, match=message) as info:
        read_video(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_video_is_an_error_or_fewer_frames(video, tmp_path):
    path, _ = video
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end is gone: unreadable
    with pytest.raises(LWMError):
        read_video(cut)


def test_write_mp4_gif_pngs_round_trip(tmp_path):
    frames = np.random.default_rng(1).uniform(-1, 1, (3, 32, 48, 3)).astype(np.float32)
    (mp4,) = write_frames(frames, tmp_path / "x.mp4", fps=4)
    got, _ = read_video(mp4, backend="opencv")
    assert got.shape == (3, 32, 48, 3)
    (gif,) = write_frames(frames, tmp_path / "x.gif", fps=4)
    assert Image.open(gif).n_frames == 3
    pngs = write_frames(frames, tmp_path / "frames")
    assert [p.name for p in pngs] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    u8 = np.clip(np.round((frames + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[1])), u8[1])
    assert not list(tmp_path.glob(".*tmp*"))  # temporary names are gone
    with pytest.raises(LWMError, match="cannot write"):
        write_frames(frames, tmp_path / "x.avi")


def test_falls_back_to_opencv_without_decord(video, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    media = load_media(video[0], max_n_frames=4)
    assert media.backend == "opencv" and len(media.frames) == 4
