"""Sequence layouts for ring attention: which tokens each of the `sp` devices holds.

Under a causal mask the contiguous split is unbalanced: the device with the first block attends to one
block, the last device to all of them. Permuting tokens before sharding fixes that (LWM did not):

- `contiguous`: device i holds tokens [i L, (i + 1) L);
- `striped`: device i holds tokens i, i + n, i + 2n, ... (Striped Attention, Brandon et al. 2023);
- `zigzag`: the sequence is cut into 2n pieces and device i holds pieces i and 2n - 1 - i.

`permutation` gives the token order (slot -> original position); the kernels mask by original position,
so results are identical for every layout; the output is put back in order with `inverse`.
"""

from __future__ import annotations

import numpy as np

from lwm_core.errors import LWMError

LAYOUTS = ("contiguous", "striped", "zigzag")


def multiple(layout: str, ring_size: int) -> int:
    """The sequence length must divide by this for the layout on `ring_size` devices."""
    check(layout)
    return 2 * ring_size if layout == "zigzag" else ring_size


def check(layout: str) -> None:
    if layout not in LAYOUTS:
        raise LWMError(f"sequence layout {layout!r} is not one of {LAYOUTS}")


def permutation(seq_len: int, ring_size: int, layout: str) -> np.ndarray:
    """[seq_len] int32: original position of each slot, slots grouped by device (device-major)."""
    if seq_len % multiple(layout, ring_size):
        raise LWMError(f"sequence length {seq_len} must divide by {multiple(layout, ring_size)} for the "
                       f"{layout!r} layout on {ring_size} devices")
    positions = np.arange(seq_len, dtype=np.int32)
    if layout == "contiguous":
        return positions
    if layout == "striped":
        return positions.reshape(-1, ring_size).T.reshape(-1)  # [n, L] device-major
    pieces = positions.reshape(2 * ring_size, -1)  # zigzag
    order = [p for i in range(ring_size) for p in (i, 2 * ring_size - 1 - i)]
    return pieces[order].reshape(-1)


def inverse(perm: np.ndarray) -> np.ndarray:
    """Slot of each original position."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv
