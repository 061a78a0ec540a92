"""Output buffers of the CPU kernels that are reused instead of mapped afresh.

glibc hands out every block of 32 MiB or more as a new memory map and unmaps it when the tensor is freed, so a
kernel writing such an output pays a page fault for each 4 KiB page on first write, call after call: most of the
LIF op's time on large layers (bench/bench_neuron.py; docs/performance.md, "Figures behind the code"). Below 32 MiB
glibc's heap reuses freed blocks and nothing is gained. So blocks of at least that size are kept here once
allocated and handed out again for the next output of the same size, but only when no tensor uses their memory any
more. PyTorch has no caching allocator on the CPU to do this.

How "no tensor uses it" is known, with public APIs only: each block is a NumPy array; an output is a tensor made by
torch.from_numpy from a fresh NumPy view of the block, and the tensor's storage holds that view until the storage
itself is freed, i.e. until no tensor, view or autograd saved tensor uses the memory. A weakref.finalize on the view
then marks the block free.

At most PER_SIZE blocks of each size, LIMIT blocks and LIMIT_BYTES in all are kept (the least recently used size
goes first), so what the cache holds beyond the live tensors is bounded: a step's largest outputs, which the next
step needs again.
"""

import threading
import weakref
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
import torch

REUSE_BYTES = 32 << 20  # glibc's largest mmap threshold: smaller blocks come back from its heap anyway
PER_SIZE = 2
LIMIT = 8
LIMIT_BYTES = 2 << 30

_lock = threading.RLock()  # re-entrant: a block's release may run while this thread holds it (a freed tensor)
_blocks: "OrderedDict[int, List[np.ndarray]]" = OrderedDict()  # size in bytes -> uint8 blocks, recent last
_in_use: Dict[int, bool] = {}  # id of a kept block -> whether a tensor uses it


def empty_strided(shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """torch.empty_strided on the CPU, from a kept block when the size is large enough (module docstring)."""
    numel = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    nbytes = numel * dtype.itemsize
    if nbytes < REUSE_BYTES:
        return torch.empty_strided(shape, strides, dtype=dtype)
    with _lock:
        block = _take(nbytes)
    view = block[:]  # held by the tensor's storage until the storage is freed
    weakref.finalize(view, _release, block)
    return torch.from_numpy(view).view(dtype).as_strided(shape, strides)


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(x) for x dense in some order of its dims (what the kernels take), with x's strides."""
    return empty_strided(x.shape, x.stride(), x.dtype)


def _release(block: np.ndarray) -> None:
    with _lock:
        if id(block) in _in_use and any(b is block for b in _blocks.get(block.nbytes, ())):
            _in_use[id(block)] = False


def _take(nbytes: int) -> np.ndarray:
    """A free kept block of `nbytes`, or a new one (kept within the bounds), marked in use."""
    blocks = _blocks.pop(nbytes, [])
    _blocks[nbytes] = blocks  # most recently used last
    for block in blocks:
        if not _in_use[id(block)]:
            _in_use[id(block)] = True
            return block
    block = np.empty(nbytes, dtype=np.uint8)
    _in_use[id(block)] = True
    blocks.append(block)
    if len(blocks) > PER_SIZE:
        _forget(blocks.pop(0))
    while sum(map(len, _blocks.values())) > LIMIT or sum(n * len(b) for n, b in _blocks.items()) > LIMIT_BYTES:
        oldest = next(iter(_blocks))
        _forget(_blocks[oldest].pop(0))
        if not _blocks[oldest]:
            del _blocks[oldest]
    return block


def _forget(block: np.ndarray) -> None:
    """Drop a block from the cache; a tensor still using it keeps it alive until it is freed."""
    _in_use.pop(id(block), None)


def clear() -> None:
    """Drop every kept block (those in use stay alive with their tensors)."""
    with _lock:
        _blocks.clear()
        _in_use.clear()
