"""Large CPU tensors without page faults (trainer.reuse_memory, on by default).

PyTorch allocates CPU tensors with the C library's malloc, and glibc hands every block above its mmap threshold
(128 KiB to 32 MiB) out as a fresh memory map, which the kernel fills with zero pages one 4 KiB page fault at a
time on first write, and unmaps again on free. A training step allocates the same large activations and gradients
at every step, so it pays those faults every step: on the neuron op's 32 MiB outputs they cost more than the
kernel itself (docs/performance.md). With `keep_freed_memory`, glibc serves every block from its heap and keeps
freed memory for the next allocation instead of returning it to the system: after the first step the pages are
already there. The process's resident memory then stays at its high-water mark, which a training run reaches
anyway. Torch-free.
"""

import ctypes
import sys
from typing import Optional

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB at the top of the heap are free


def keep_freed_memory() -> Optional[str]:
    """Set glibc's allocator as described above for this process. None when done, else why it could not be
    (not Linux, or a C library without glibc's mallopt); then nothing changed."""
    if not sys.platform.startswith("linux"):
        return f"not on Linux ({sys.platform})"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "the C library has no mallopt (not glibc)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) != 1:
        return "mallopt refused the settings"
    return None
