"""lwm_core.fileio.atomic_path: the one atomic-write helper every writer uses."""

import os

import numpy as np
import pytest

from lwm_core.checkpoint.common import atomic_path as reexported
from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path


def _leftovers(folder, target):
    return sorted(p.name for p in folder.iterdir() if p.name != target)


def test_success_renames_onto_target(tmp_path):
    dst = tmp_path / "out.bin"
    with atomic_path(dst, overwrite=False) as tmp:
        assert tmp.parent == tmp_path and tmp != dst
        tmp.write_bytes(b"new")
        assert not dst.exists()  # nothing visible under the final name until the body ends
    assert dst.read_bytes() == b"new"
    assert _leftovers(tmp_path, "out.bin") == []


def test_overwrite_replaces_file(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with atomic_path(dst, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"
    assert _leftovers(tmp_path, "out.bin") == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("as_folder", [False, True])
def test_exception_keeps_old_target_and_removes_temp(tmp_path, exc, as_folder):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_path(dst, overwrite=True) as tmp:
            if as_folder:
                tmp.mkdir()
                (tmp / "part").write_bytes(b"half")
            else:
                tmp.write_bytes(b"half")
            raise exc
    assert dst.read_bytes() == b"old"
    assert _leftovers(tmp_path, "out.bin") == []


def test_exception_before_anything_written(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x.npz", overwrite=False):
            raise ValueError("nothing written")
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_target_without_overwrite(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(LWMError, match="already exists"):
        with atomic_path(dst, overwrite=False) as tmp:
            tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"old"
    assert _leftovers(tmp_path, "out.bin") == []


def test_missing_parent_folder_is_one_line_lwmerror(tmp_path):
    with pytest.raises(LWMError, match="does not exist") as info:
        with atomic_path(tmp_path / "nope" / "out.bin", overwrite=True):
            pass
    assert "\n" not in str(info.value)


def test_folder_target_is_replaced_whole(tmp_path):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    (dst / "stale.safetensors").write_bytes(b"old")
    (dst / "sub").mkdir()
    with atomic_path(dst, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in dst.iterdir()) == ["model.safetensors"]
    assert (dst / "model.safetensors").read_bytes() == b"new"
    assert _leftovers(tmp_path, "ckpt") == []


def test_failed_rename_puts_old_folder_back(tmp_path, monkeypatch):
    import lwm_core.fileio as fileio

    dst = tmp_path / "ckpt"
    dst.mkdir()
    (dst / "old").write_bytes(b"old")
    real_replace, calls = os.replace, []

    def replace(src, target):
        calls.append((src, target))
        if len(calls) == 2:  # the new folder onto dst, after the old one was moved aside
            raise OSError("disk said no")
        real_replace(src, target)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError, match="disk said no"):
        with atomic_path(dst, overwrite=True) as tmp:
            tmp.mkdir()
            (tmp / "new").write_bytes(b"new")
    assert sorted(p.name for p in dst.iterdir()) == ["old"]
    assert _leftovers(tmp_path, "ckpt") == []


def test_folder_over_file_and_file_over_folder(tmp_path):
    dst = tmp_path / "out"
    dst.write_bytes(b"file")
    with atomic_path(dst, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "a").write_bytes(b"a")
    assert dst.is_dir() and (dst / "a").read_bytes() == b"a"
    with atomic_path(dst, overwrite=True) as tmp:
        tmp.write_bytes(b"file again")
    assert dst.read_bytes() == b"file again"
    assert _leftovers(tmp_path, "out") == []


def test_temp_name_keeps_suffix_hidden_with_pid(tmp_path):
    with atomic_path(tmp_path / "tokens.npz", overwrite=False) as tmp:
        assert tmp.suffix == ".npz" and tmp.name.startswith(".tokens.")
        assert str(os.getpid()) in tmp.name
        np.savez(tmp, x=np.arange(3))  # np.savez appends .npz unless the name already ends with it
    with np.load(tmp_path / "tokens.npz") as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))
    assert _leftovers(tmp_path, "tokens.npz") == []


def test_temp_names_differ_between_calls(tmp_path):
    with atomic_path(tmp_path / "a.bin", overwrite=True) as one, \
            atomic_path(tmp_path / "a.bin", overwrite=True) as two:
        assert one != two
        one.write_bytes(b"1")
        two.write_bytes(b"2")
    assert (tmp_path / "a.bin").read_bytes() == b"1"  # outer block renames last


def test_checkpoint_common_reexports_it():
    assert reexported is atomic_path


def test_writers_leave_only_their_target(tmp_path):
    """The writers that use atomic_path: no temporary file beside the result, suffixes kept."""
    from lwm_core.token_files import TokenFile, load_tokens, save_tokens
    from lwm_core.video import write_frames

    tokens = TokenFile(codes=np.arange(12, dtype=np.uint16).reshape(1, 3, 4),
                       frame_indices=np.zeros(1, np.int64), fps=4.0, source="s", vqgan_id="v",
                       vqgan_config="{}")
    save_tokens(tmp_path / "a.tokens", tokens)  # not .npz: np.savez must not append one
    np.testing.assert_array_equal(load_tokens(tmp_path / "a.tokens").codes, tokens.codes)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    write_frames(frames, tmp_path / "v.mp4")  # OpenCV picks the container from the temp name
    write_frames(frames, tmp_path / "v.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tokens", "v.gif", "v.mp4"]
    assert (tmp_path / "v.mp4").stat().st_size > 0
