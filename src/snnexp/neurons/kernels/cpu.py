"""The CPU kernels of lif_cpu.c (the neurons), pool_cpu.c (max pooling, for snnexp.pooling) and count_cpu.c (the
activity counters' spike counts): compiled once per machine with the system's C compiler into one library, loaded
with ctypes.

Plain C through ctypes rather than a torch C++ extension: no torch headers to compile against, and a ctypes call
releases the GIL, so `torch.get_num_threads()` Python threads each run the kernel on their own slice of the
neurons. The build compiles a vectorised loop for every surrogate, with and without PLIF's tau gradient, for
float32 and float64: about 25 s of one core of the build VM, once per machine, as three units in parallel (16 s
on 2 cores). bench/bench_neuron.py compares it with torch.compile (inductor) of the same loops and with the peers.

The shared library is cached under $XDG_CACHE_HOME/snnexp/kernels (default ~/.cache/snnexp/kernels, beside the
frame cache) by a hash of the source, the flags, the compiler and the CPU; `python -m snnexp.neurons.kernels.cpu`
builds it ahead of time. Importing snnexp builds nothing: the first module that runs these kernels (a neuron with
the fused backend, snnexp.pooling.MaxPool2d) builds them, with one line of notice (neurons/fused.py).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Optional, Tuple

import torch

from snnexp import cache_home
from snnexp.files import atomic_path
from snnexp.neurons.kernels import buffers

SOURCES = [Path(__file__).with_name(name) for name in ("lif_cpu.c", "pool_cpu.c", "count_cpu.c")]
HEADERS = [Path(__file__).with_name("lif_cpu_body.h")]  # lif_cpu.c's functions, included once per type
# -ffp-contract=off: no fused multiply-add, so H is computed with PyTorch's rounding and spikes match exactly.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp-simd", "-fPIC"]
# the units compiled in parallel, then linked into one library: (source, defines)
UNITS = [(SOURCES[0], ["-DSNNEXP_ONLY_F32"]), (SOURCES[0], ["-DSNNEXP_ONLY_F64"]), (SOURCES[1], []), (SOURCES[2], [])]
SURROGATE_KINDS = {"atan": 0, "sigmoid": 1, "rect": 2, "triangle": 3, "fast_sigmoid": 4}
LEAK = {"if": 0, "decay_input": 1, "plain": 2}
MIN_PER_THREAD = 1 << 15  # below this many neurons per thread, one thread is faster than handing out work

log = logging.getLogger("snnexp")

_P, _I64, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_C_TYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


class LifParams(NamedTuple):
    """A neuron's settings as the kernels take them: one record from SpikingNeuron.dynamics() down to the C (passed
    by pointer as lif_cpu_body.h's lif_params) or the Triton launch (kernels/cuda.py), so that a new setting is
    added in one place. tau_inv is a float for the CPU, a 0-d tensor on CUDA (the kernel reads it there)."""

    leak: str  # a key of LEAK
    tau_inv: Any
    v_th: float
    v_reset: float
    soft_reset: bool
    detach_reset: bool = False  # the backward's settings; the forward kernels ignore them
    surrogate: str = "atan"  # a key of SURROGATE_KINDS
    sg_a: float = 0.0
    sg_b: float = 0.0

    def c(self, dtype: torch.dtype) -> ctypes.Structure:
        """The C record for the kernels of `dtype` (float32 or float64), to pass with ctypes.byref."""
        return _C_PARAMS[dtype](LEAK[self.leak], int(self.soft_reset), int(self.detach_reset),
                                SURROGATE_KINDS[self.surrogate], self.tau_inv, self.v_th, self.v_reset, self.sg_a,
                                self.sg_b)


def _c_params(real) -> type:
    """lif_cpu_body.h's lif_params for TYPE `real`, field by field (tests/test_fused.py compares them)."""
    return type(f"lif_params_{real.__name__}", (ctypes.Structure,), {"_fields_": [
        ("leak", ctypes.c_int), ("soft_reset", ctypes.c_int), ("detach_reset", ctypes.c_int),
        ("sg_kind", ctypes.c_int), ("tau_inv", real), ("v_th", real), ("v_reset", real), ("sg_a", real),
        ("sg_b", real)]})


_C_PARAMS = {dtype: _c_params(real) for dtype, (_, real) in _C_TYPES.items()}


class KernelUnavailable(RuntimeError):
    pass


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
    for suffix, _ in _C_TYPES.values():
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


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="snnexp-lif")


def _slices(n: int, min_per_thread: int = MIN_PER_THREAD):
    """(threads, slice length) of _run_split over [0, n): slice lo // length is run by one thread."""
    workers = max(1, min(torch.get_num_threads(), n // min_per_thread))
    return workers, -(-n // workers)


def _run_split(fn, n: int, min_per_thread: int = MIN_PER_THREAD) -> list:
    """fn(lo, hi) over [0, n) in torch.get_num_threads() slices, in parallel; their results in order."""
    workers, step = _slices(n, min_per_thread)
    if workers == 1:
        return [fn(0, n)]
    return list(_pool(workers).map(lambda lo: fn(lo, min(n, lo + step)), range(0, n, step)))


def empty_steps(x: torch.Tensor, steps: int) -> torch.Tensor:
    """An empty [steps, *x.shape] tensor with x's memory order (channels_last included) at every step: the
    spikes of x fed at each of `steps` steps (x one dense block), on the CPU and on CUDA alike."""
    return torch.empty_strided((steps, *x.shape), (x.numel(), *x.stride()), dtype=x.dtype, device=x.device)


def _steps(x: torch.Tensor, steps: int):
    """(T, N, x_step) of x [T, ...], or of x [...] (one dense block) seen at each of `steps` steps: x_step 0."""
    return (steps, x.numel(), 0) if steps else (x.shape[0], x[0].numel(), x[0].numel())


def _norm_args(norm: Optional[torch.Tensor], inner: int, span: Optional[int] = None):
    """(rows, lif_cpu.c's (norm, ld, nc, inner)) for BN's [4, nc] (alpha, beta, mean, invstd), or no BN. The rows
    are what the kernels read (`norm_rows`), to be kept alive while they run: for channels last (inner 1) each row
    tiled to nc + span values (value i: channel i % nc), so that a block of up to `span` elements reads its own in
    place; otherwise norm as it is."""
    if norm is None:
        return None, (None, 0, 1, 1)
    nc, span = norm.shape[1], span or block()
    rows = norm.repeat(1, -(-(nc + span) // nc)).contiguous() if inner == 1 else norm
    return rows, (rows.data_ptr(), rows.shape[1], nc, inner)


def _norm_sums(norm: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A thread's [2, nc] float64 sums of dL/dBN(X) and dL/dBN(X) x_hat per channel, where there is a BN."""
    return None if norm is None else torch.zeros(2, norm.shape[1], dtype=torch.float64)


def _gather(results) -> tuple:
    """The threads' (dL/d(1/tau), BN sums or None) added up."""
    taus, sums = zip(*results)
    return sum(taus), None if sums[0] is None else torch.stack(sums).sum(0)


def forward(x: torch.Tensor, params: LifParams, steps: int = 0, norm: Optional[torch.Tensor] = None, inner: int = 1):
    """Spikes of x [T, ...] (one dense block per step, float32 or float64), or with `steps` of x [...] at every
    one of `steps` steps. With `norm`, of BN(x) (lif_cpu.c; `inner` places the channels)."""
    suffix, _ = _C_TYPES[x.dtype]
    fn = getattr(library(), f"lif_forward_{suffix}")
    T, N, x_step = _steps(x, steps)
    spikes = buffers.empty_strided((steps, *x.shape), (x.numel(), *x.stride()), x.dtype) if steps \
        else buffers.empty_like(x)
    rows, norm_args = _norm_args(norm, inner)
    record = ctypes.byref(params.c(x.dtype))

    def run(lo, hi):
        if fn(x.data_ptr(), spikes.data_ptr(), T, N, x_step, lo, hi, record, *norm_args) != 0:
            raise MemoryError(f"lif_forward: no memory for 4 x {block()} values")

    _run_split(run, N)
    return spikes


def backward(x, grad_spikes, params: LifParams, want_tau: bool, steps: int = 0, norm: Optional[torch.Tensor] = None,
             inner: int = 1):
    """(grad_x, dL/d(1/tau) as a float, 0.0 unless want_tau, BN's sums or None); with `steps`, grad_x is summed
    over the steps. With `norm`, grad_x is dL/dBN(x) and the sums [2, nc] those of lif_cpu.c."""
    suffix, _ = _C_TYPES[x.dtype]
    fn = getattr(library(), f"lif_backward_{suffix}")
    T, N, x_step = _steps(x, steps)
    grad_x = buffers.empty_like(x)
    rows, norm_args = _norm_args(norm, inner)
    record = ctypes.byref(params.c(x.dtype))

    def run(lo, hi):
        partial, sums = ctypes.c_double(0.0), _norm_sums(norm)
        status = fn(x.data_ptr(), grad_spikes.data_ptr(), grad_x.data_ptr(), T, N, x_step, lo, hi, record,
                    int(want_tau), ctypes.byref(partial), *norm_args, None if sums is None else sums.data_ptr())
        if status != 0:
            raise MemoryError(f"lif_backward: no memory for its scratch ({2 * T + 11} rows of up to {block()} values)")
        return partial.value, sums

    return (grad_x, *_gather(_run_split(run, N)))


def norm_input_grad(x: torch.Tensor, grad: torch.Tensor, coef: torch.Tensor, inner: int) -> torch.Tensor:
    """grad = k1 grad + k2 x + k3 per channel, in place (lif_cpu.c `norm_input_grad`; coef [3, nc] in x's dtype);
    x and grad share one memory order, whose rows are nc * inner elements."""
    suffix, _ = _C_TYPES[x.dtype]
    fn = getattr(library(), f"norm_input_grad_{suffix}")
    nc = coef.shape[1]
    _run_split(lambda lo, hi: fn(x.data_ptr(), grad.data_ptr(), coef.data_ptr(), nc, inner, lo, hi),
               x.numel() // (nc * inner), max(1, MIN_PER_THREAD // (nc * inner)))
    return grad


def count_nonzero(rows: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """((rows != 0).sum(0) as int64, whether every entry is -1, 0 or 1) of rows [N, F] (contiguous, float32 or
    float64), in one pass (count_cpu.c): the activity counters of a test pass."""
    suffix, _ = _C_TYPES[rows.dtype]
    fn = getattr(library(), f"count_nonzero_{suffix}")
    N, F = rows.shape
    per_thread = max(1, MIN_PER_THREAD // max(F, 1))
    workers, step = _slices(N, per_thread)
    counts = torch.zeros(workers, F, dtype=torch.int32)  # one row per thread
    flags = _run_split(lambda lo, hi: fn(rows.data_ptr(), counts[lo // max(step, 1)].data_ptr(), F, lo, hi), N,
                        per_thread)
    return counts.sum(0, dtype=torch.int64), all(flags)


def pool_forward(x: torch.Tensor, params: LifParams, steps: int, kh: int, kw: int, channels_last: bool,
                 norm: Optional[torch.Tensor] = None, inner: int = 1, count: bool = False):
    """`max_pool` of the spikes `forward` would give, without them (neurons/pooled.py): (y [T * B, C, Ho, Wo] in x's
    memory order, pos, counts) for x [T, B, C, H, W], or with `steps` for x [B, C, H, W] fed at each of `steps`
    steps. With `count`, counts [C, H, W] (contiguous) holds each neuron's spikes over the T steps and the batch
    (the activity counters of a test pass); else None."""
    suffix, _ = _C_TYPES[x.dtype]
    fn = getattr(library(), f"lif_pool_forward_{suffix}")
    T, N, x_step = _steps(x, steps)
    B, C, H, W = x.shape if steps else x.shape[1:]
    M, _, _, Cm = maps_shape((B, C, H, W), channels_last)
    y = torch.empty(T * M, H // kh, W // kw, Cm, dtype=x.dtype)
    pos = torch.empty(y.shape, dtype=torch.uint8)
    rows, norm_args = _norm_args(norm, inner, kh * W * Cm)
    n, per_thread = M * (H // kh), max(1, MIN_PER_THREAD // (T * kh * W * Cm))
    workers, step = _slices(n, per_thread)
    per_sample = M // B  # maps of one sample: its C channels (NCHW), or 1 (channels last)
    counts = torch.zeros(workers, per_sample * H * W * Cm, dtype=x.dtype) if count else None  # one per thread
    record = ctypes.byref(params.c(x.dtype))

    def run(lo, hi):
        own = None if counts is None else counts[lo // step].data_ptr()
        if fn(x.data_ptr(), y.data_ptr(), pos.data_ptr(), T, N, x_step, H, W, Cm, kh, kw, lo, hi, record, *norm_args,
              own, per_sample) != 0:
            raise MemoryError(f"lif_pool_forward: no memory for 6 x {kh * W * Cm} values")

    _run_split(run, n, per_thread)
    if counts is not None:  # the threads' counts added, as a contiguous [C, H, W] (one sample's neurons: small)
        counts = counts.sum(0)
        counts = counts.view(H, W, C).permute(2, 0, 1).contiguous() if channels_last else counts.view(C, H, W)
    return _nchw(y, (T * B, C), channels_last), pos, counts


def pool_backward(x, grad_y, pos, params: LifParams, want_tau: bool, steps: int, kh: int, kw: int, channels_last: bool,
                  norm: Optional[torch.Tensor] = None, inner: int = 1):
    """`backward` of neurons whose spikes went into `max_pool` (neurons/pooled.py): from the pool's dL/dy
    [T * B, C, Ho, Wo] (in the pool's memory order) and its positions, without dL/dspikes."""
    suffix, _ = _C_TYPES[x.dtype]
    fn = getattr(library(), f"lif_pool_backward_{suffix}")
    T, N, x_step = _steps(x, steps)
    M, H, W, C = maps_shape(x.shape if steps else x.shape[1:], channels_last)
    grad_x = buffers.empty_like(x)
    rows, norm_args = _norm_args(norm, inner)
    record = ctypes.byref(params.c(x.dtype))

    def run(lo, hi):
        partial, sums = ctypes.c_double(0.0), _norm_sums(norm)
        status = fn(x.data_ptr(), grad_y.data_ptr(), pos.data_ptr(), grad_x.data_ptr(), T, N, x_step, H, W, C, kh,
                    kw, lo, hi, record, int(want_tau), ctypes.byref(partial), *norm_args,
                    None if sums is None else sums.data_ptr())
        if status != 0:
            raise MemoryError(f"lif_pool_backward: no memory for its scratch ({3 * T + 11} rows of up to "
                              f"{block()} values)")
        return partial.value, sums

    return (grad_x, *_gather(_run_split(run, M * H, max(1, MIN_PER_THREAD // (W * C)))))


def max_pool(x: torch.Tensor, kh: int, kw: int, channels_last: bool):
    """(y, pos) of pool_cpu.c for x [N, C, H, W], contiguous channels_last (if `channels_last`) or NCHW: the
    window maxima [N, C, H // kh, W // kw] in x's memory order, and their positions in the window as uint8, laid
    out as pool_cpu.c reads them back in `max_pool_backward`."""
    suffix, _ = _C_TYPES[x.dtype]
    fn = getattr(library(), f"max_pool_forward_{suffix}")
    N, H, W, C = maps_shape(x.shape, channels_last)
    y = torch.empty(N, H // kh, W // kw, C, dtype=x.dtype)
    pos = torch.empty(y.shape, dtype=torch.uint8)
    _run_split(lambda lo, hi: fn(x.data_ptr(), y.data_ptr(), pos.data_ptr(), H, W, C, kh, kw, lo, hi),
               N * (H // kh), max(1, MIN_PER_THREAD // (W * C)))
    return _nchw(y, x.shape[:2], channels_last), pos


def max_pool_backward(grad_y: torch.Tensor, pos: torch.Tensor, x_shape, kh: int, kw: int,
                      channels_last: bool) -> torch.Tensor:
    """dL/dx [N, C, H, W] of `max_pool` from dL/dy and the positions it gave, in the forward's memory order."""
    suffix, _ = _C_TYPES[grad_y.dtype]
    fn = getattr(library(), f"max_pool_backward_{suffix}")
    grad_y = grad_y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    N, H, W, C = maps_shape(x_shape, channels_last)
    grad_x = buffers.empty_strided((N, H, W, C), (H * W * C, W * C, C, 1), grad_y.dtype)
    _run_split(lambda lo, hi: fn(grad_y.data_ptr(), pos.data_ptr(), grad_x.data_ptr(), H, W, C, kh, kw, lo, hi),
               N * H, max(1, MIN_PER_THREAD // (W * C)))
    return _nchw(grad_x, x_shape[:2], channels_last)


def maps_shape(shape, channels_last: bool):
    """(N, H, W, C) of an [N, C, H, W] tensor as pool_cpu.c sees it: NCHW is N*C maps with one channel."""
    N, C, H, W = shape
    return (N, H, W, C) if channels_last else (N * C, H, W, 1)


def _nchw(out: torch.Tensor, nc, channels_last: bool) -> torch.Tensor:
    """out [N', H, W, C'] of `maps_shape` as the [N, C, H, W] tensor it is (a view, in its memory order)."""
    H, W = out.shape[1:3]
    return out.permute(0, 3, 1, 2) if channels_last else out.view(*nc, H, W)


if __name__ == "__main__":
    build(verbose=True)
