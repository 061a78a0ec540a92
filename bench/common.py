"""What every benchmark in bench/ shares: median timing (these machines are noisy), the peak memory of a call on
the CPU, and the results file."""

import ctypes
import json
import statistics
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn, repeats):
    """The median wall time of `repeats` calls of fn(), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(name: str, results) -> None:
    """bench/results/<name>.json, and say where it went."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def cpu_peak_mb(fn) -> float:
    """The peak memory of one call of fn() on the CPU, in MiB: glibc's count of bytes in use (mallinfo2: the heap
    and the mapped blocks that hold large tensors), sampled every 0.2 ms by a thread during the call, above what was
    in use before it. Call it after a warm-up call, in a process of its own per measurement where loading code or
    other measurements' caches could count."""
    before = _malloc_in_use()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _malloc_in_use())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    fn()
    done.set()
    sampler.join()
    return (max(peak[0], _malloc_in_use()) - before) / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def _malloc_in_use() -> int:
    info = _libc.mallinfo2()
    return info.hblkhd + info.uordblks
