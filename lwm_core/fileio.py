"""Atomic writes: the one place that writes under a temporary name and renames onto the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from lwm_core.errors import LWMError


def _temp_sibling(dst: Path) -> Path:
    # Same folder as dst so that the final rename is atomic (never across file systems). The name
    # ends with dst's suffix: np.savez, PIL and OpenCV pick (or append) the format from it.
    return dst.parent / f".{dst.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{dst.suffix}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside `dst`; on success rename it onto `dst`, on failure remove it.

    Works for files and folders (the writer creates whichever it likes at the yielded path). A reader
    never sees a half-written `dst`: either the old one (until the rename) or the complete new one;
    an exception in the body (KeyboardInterrupt included) leaves the old `dst` as it was. The
    temporary name ends with `dst`'s suffix. `dst`'s folder must exist; an existing `dst` is
    refused unless `overwrite`.
    Example: `with atomic_path("out.npz", overwrite=True) as tmp: np.savez(tmp, x=x)`.
    """
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise LWMError(f"cannot write {dst}: folder {dst.parent} does not exist")
    if os.path.lexists(dst) and not overwrite:
        raise LWMError(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    tmp = _temp_sibling(dst)
    try:
        yield tmp
        if os.path.lexists(dst) and (tmp.is_dir() or (dst.is_dir() and not dst.is_symlink())):
            # os.replace cannot put a folder over a file nor anything over a non-empty folder: move
            # the old one aside first, and back if the second rename fails.
            old = _temp_sibling(dst)
            os.replace(dst, old)
            try:
                os.replace(tmp, dst)
            except BaseException:
                os.replace(old, dst)
                raise
            _remove(old)
        else:
            os.replace(tmp, dst)
    finally:
        _remove(tmp)
