"""The CPU kernels' build: lif_cpu.c (the neurons), pool_cpu.c (max pooling) and count_cpu.c (the activity
counters' spike counts) compiled once per machine with the system's C compiler into one library, loaded with ctypes
with each function's signature (`library`).

Plain C through ctypes rather than a torch C++ extension: no torch headers to compile against, and a ctypes call
releases the GIL, so that Python threads each run a kernel on their own slice of the work (kernels/cpu.py). The build
compiles a vectorised loop for every surrogate, with and without PLIF's tau gradient, for float32 and float64, as
parallel units (docs/performance.md gives how long it takes).

The shared library is cached under $XDG_CACHE_HOME/snnexp/kernels (default ~/.cache/snnexp/kernels, beside the
frame cache) by a hash of the source, the flags, the compiler and the CPU; `python -m snnexp.ops.kernels.cpu`
builds it ahead of time. Importing snnexp builds nothing: the first module that runs these kernels (a neuron with
the fused backend, snnexp.nn.pooling.MaxPool2d) builds them, with one line of notice (ops/fused.py).
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from snnexp import cache_home
from snnexp.errors import KernelUnavailable
from snnexp.files import atomic_path
from snnexp.ops.kernels.params import C_TYPES

SOURCES = [Path(__file__).with_name(name) for name in ("lif_cpu.c", "pool_cpu.c", "count_cpu.c")]
HEADERS = [Path(__file__).with_name("lif_cpu_body.h")]  # lif_cpu.c's functions, included once per type
# -ffp-contract=off: no fused multiply-add, so H is computed with PyTorch's rounding and spikes match exactly.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp-simd", "-fPIC"]
# the units compiled in parallel, then linked into one library: (source, defines)
UNITS = [(SOURCES[0], ["-DSNNEXP_ONLY_F32"]), (SOURCES[0], ["-DSNNEXP_ONLY_F64"]), (SOURCES[1], []), (SOURCES[2], [])]

log = logging.getLogger("snnexp")

_P, _I64, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def cache_dir() -> Path:
    return cache_home() / "kernels"


def _cpu_id() -> str:
    try:  # -march=native code must not be loaded on another CPU sharing the same home directory
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise KernelUnavailable("no C compiler found (set CC, or install gcc)")
    return cc


def build(verbose: bool = False) -> Path:
    """Compile the kernels if this machine has no up-to-date copy; return the library's path."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    sources = [source.read_text() for source in [*SOURCES, *HEADERS]]
    key = hashlib.sha256("\0".join([*sources, " ".join(FLAGS), str(UNITS), version, _cpu_id()]).encode())
    target = cache_dir() / f"lif_cpu-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building snnexp's CPU neuron kernels for this machine with %s (once; about 20 s on 2 idle cores): %s",
             Path(cc).name, target)
    start = time.perf_counter()
    with atomic_path(target) as out:  # build aside, then rename: never half a file
        _compile(cc, Path(out))
    log.info("built the CPU kernels in %.0f s", time.perf_counter() - start)
    if verbose:
        print(f"built {target}")
    return target


def _compile(cc: str, out: Path) -> None:
    """UNITS compiled side by side into objects beside `out`, then linked into the library `out`."""
    objects = [out.with_name(f"{out.name}.{i}.o") for i in range(len(UNITS))]
    try:
        procs = [subprocess.Popen([cc, *FLAGS, *defines, "-c", "-o", str(obj), str(source)], stderr=subprocess.PIPE,
                                  text=True) for (source, defines), obj in zip(UNITS, objects)]
        errors = [proc.communicate()[1] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise KernelUnavailable(f"{cc} could not build {', '.join(s.name for s in SOURCES)}:\n"
                                    + "\n".join(e.strip() for e in errors if e.strip()))
        link = subprocess.run([cc, "-shared", "-o", str(out), *map(str, objects), "-lm"], capture_output=True,
                              text=True)
        if link.returncode != 0:
            raise KernelUnavailable(f"{cc} could not link the kernels:\n{link.stderr.strip()}")
    finally:
        for obj in objects:
            obj.unlink(missing_ok=True)


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The kernels' library with each function's ctypes signature, as the C sources declare them (tests/test_fused.py
    checks every one against the C declarations)."""
    lib = ctypes.CDLL(str(build()))
    for suffix, _ in C_TYPES.values():
        norm = [_P, _I64, _I64, _I64]  # BN's rows (or NULL), their stride, nc, inner: see lif_cpu.c
        fwd = getattr(lib, f"lif_forward_{suffix}")
        fwd.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _P] + norm  # _P: the lif_params record
        fwd.restype = _I
        bwd = getattr(lib, f"lif_backward_{suffix}")
        bwd.argtypes = [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P, _I, _P] + norm + [_P]
        bwd.restype = _I
        joint_fwd = getattr(lib, f"lif_pool_forward_{suffix}")
        joint_fwd.argtypes = [_P, _P, _P] + [_I64] * 10 + [_P] + norm + [_P, _I64]
        joint_fwd.restype = _I
        joint = getattr(lib, f"lif_pool_backward_{suffix}")
        joint.argtypes = [_P, _P, _P, _P] + [_I64] * 10 + [_P, _I, _P] + norm + [_P]
        joint.restype = _I
        norm_grad = getattr(lib, f"norm_input_grad_{suffix}")
        norm_grad.argtypes = [_P, _P, _P] + [_I64] * 4
        norm_grad.restype = None
        pool_fwd, pool_bwd = getattr(lib, f"max_pool_forward_{suffix}"), getattr(lib, f"max_pool_backward_{suffix}")
        pool_fwd.argtypes = pool_bwd.argtypes = [_P, _P, _P] + [_I64] * 7
        pool_fwd.restype = pool_bwd.restype = None
        count = getattr(lib, f"count_nonzero_{suffix}")
        count.argtypes, count.restype = [_P, _P, _I64, _I64, _I64], _I
    lib.lif_block.argtypes, lib.lif_block.restype = [], _I64
    return lib


def block() -> int:
    """Neurons per inner loop of lif_cpu.c (its BLOCK)."""
    return library().lif_block()


def available() -> Optional[str]:
    """None if the kernel can be used, else why not."""
    try:
        library()
        return None
    except (KernelUnavailable, OSError) as e:
        return str(e)
