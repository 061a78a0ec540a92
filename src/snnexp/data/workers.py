"""The frame cache's build machinery (data/cache.py): the conversion worker processes, which end with the build
(cancelled on an error or Ctrl-C, and each ending itself when the process that started it ends, even by SIGKILL),
and frames.npy written through a memory map with its disk space reserved first (a write into space the disk cannot
give would be SIGBUS)."""


import ctypes
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from snnexp.errors import CorruptFile, DatasetError
from snnexp.files import atomic_path

log = logging.getLogger("snnexp")


class SafeConvert:
    """Return CorruptFile instead of raising it, so one bad file does not kill the worker pool. An OSError (a source
    that cannot be read) becomes a DatasetError naming it, so that it is not taken for the cache's disk being full."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, source):
        try:
            return self.fn(source)
        except CorruptFile as e:
            return e
        except OSError as e:
            raise DatasetError(f"{e.filename or source}: cannot be read ({e.strerror or e})") from None


@contextmanager
def worker_pool(workers: int):
    """`workers` conversion processes (none for 1: converted here), which the build leaves none of behind: when it
    stops on an error or Ctrl-C, the pending conversions are cancelled and the processes ended at once (not after
    the conversions under way, which may take minutes); when this process is killed, each worker ends itself
    (_worker_start)."""
    if workers <= 1:
        yield InProcess()
        return
    pool = ProcessPoolExecutor(workers, initializer=_worker_start, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        processes = list((pool._processes or {}).values())  # no public way to end them (before Python 3.14)
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(5)
        raise
    pool.shutdown()


PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def _worker_start(parent: int) -> None:
    """Run by each worker as it starts. Ctrl-C at a terminal signals the whole process group: the parent alone
    handles it (and ends the workers), so no worker prints a traceback. A worker ends when the parent ends, even by
    SIGKILL, after which nothing else would end it: on Linux the kernel kills it then (PR_SET_PDEATHSIG), and a
    thread checks every half second (other systems, and a parent gone before this ran)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_end_after, args=(parent,), daemon=True).start()


def _end_after(parent: int) -> None:
    while True:
        try:
            os.kill(parent, 0)  # signal 0: is it there?
        except OSError:  # gone (or its pid already reused by another user's process)
            os._exit(1)
        time.sleep(0.5)


class InProcess:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items, chunksize=1):
        return map(fn, items)


def truncate_npy(path: Path, n: int, frame_shape) -> None:
    """Keep the first n samples of the .npy at `path` (rewritten beside it, then renamed onto it)."""
    old = np.load(path, mmap_mode="r")
    with atomic_path(path) as part:
        new = new_npy(part, (n, *frame_shape))
        new[:] = old[:n]
        new.flush()
        del new, old


def new_npy(path: Path, shape) -> np.memmap:
    """A new uint16 .npy of `shape` at `path`, mapped for writing, its disk space reserved first: a write through a
    memory map into space the disk cannot give is SIGBUS, which kills the process with no message, where the
    reservation is an OSError (ENOSPC) now, before any sample is converted."""
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    with open(path, "r+b") as f:
        reserve(f.fileno(), frames.offset, frames.nbytes)
    return frames


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the disk blocks of bytes offset..offset+length of the file `fd` (its zeros are already there, as
    a hole in the file, which takes no space until written)."""
    if length == 0:
        return
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, offset, length)
        return
    zeros = bytes(1 << 20)  # no posix_fallocate (macOS): writing the zeros allocates them
    for start in range(offset, offset + length, len(zeros)):
        os.pwrite(fd, zeros[:offset + length - start], start)
