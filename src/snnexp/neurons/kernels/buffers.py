"""Output buffers of the CPU kernels that are reused instead of mapped afresh.

glibc hands out every block of 32 MiB or more as a new memory map and unmaps it when the tensor is freed, so a
kernel writing such an output pays a page fault for each 4 KiB page on first write, call after call: 16,386 faults
and about 20 ms of the LIF op's 26 ms on [8, 32, 128, 16, 16] (bench/bench_neuron.py, docs/performance.md). Below
32 MiB glibc's heap reuses freed blocks and nothing is gained. So blocks of at least that size are kept here once
allocated and handed out again for the next output of the same size, but only when no tensor uses their memory any
more: the storage's use count is then the cache's own. PyTorch has no caching allocator on the CPU to do this.

At most PER_SIZE blocks of each size, LIMIT blocks and LIMIT_BYTES in all are kept (the least recently used size
goes first), so what the cache holds beyond the live tensors is bounded: a step's largest outputs, which the next
step needs again.
"""

import threading
from collections import OrderedDict
from typing import List, Sequence

import torch

REUSE_BYTES = 32 << 20  # glibc's largest mmap threshold: smaller blocks come back from its heap anyway
PER_SIZE = 2
LIMIT = 8
LIMIT_BYTES = 2 << 30

_lock = threading.Lock()
_blocks: "OrderedDict[int, List[torch.Tensor]]" = OrderedDict()  # size in bytes -> uint8 blocks, recent last


def _use_count(block: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(block.untyped_storage()._cdata)


_UNUSED = _use_count(torch.empty(1, dtype=torch.uint8))  # a block only the cache holds (counts the query's own)


def empty_strided(shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """torch.empty_strided on the CPU, from a kept block when the size is large enough (module docstring)."""
    numel = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    nbytes = numel * dtype.itemsize
    if nbytes < REUSE_BYTES:
        return torch.empty_strided(shape, strides, dtype=dtype)
    with _lock:
        block = _take(nbytes)
    return block.view(dtype).as_strided(shape, strides)


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(x) for x dense in some order of its dims (what the kernels take), with x's strides."""
    return empty_strided(x.shape, x.stride(), x.dtype)


def _take(nbytes: int) -> torch.Tensor:
    blocks = _blocks.pop(nbytes, [])
    _blocks[nbytes] = blocks  # most recently used last
    for block in blocks:
        if _use_count(block) == _UNUSED:
            return block
    block = torch.empty(nbytes, dtype=torch.uint8)
    blocks.append(block)
    if len(blocks) > PER_SIZE:
        blocks.pop(0)
    while sum(map(len, _blocks.values())) > LIMIT or sum(n * len(b) for n, b in _blocks.items()) > LIMIT_BYTES:
        oldest = next(iter(_blocks))
        _blocks[oldest].pop(0)
        if not _blocks[oldest]:
            del _blocks[oldest]
    return block


def clear() -> None:
    """Drop every kept block (those in use stay alive with their tensors)."""
    with _lock:
        _blocks.clear()
