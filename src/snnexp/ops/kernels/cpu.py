"""The CPU kernels' Python side: each C function (kernels/build.py builds and loads them) called on torch tensors,
the work split over torch.get_num_threads() Python threads (a ctypes call releases the GIL), each on its own slice.
bench/bench_neuron.py compares the neuron kernels with torch.compile (inductor) of the same loops and with the peers.
"""

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import torch

from snnexp.errors import KernelUnavailable  # noqa: F401  (cpu.KernelUnavailable: what a failed build raises)
from snnexp.ops.kernels import buffers
from snnexp.ops.kernels.build import HEADERS, SOURCES, available, block, build, library  # noqa: F401
from snnexp.ops.kernels.params import _C_PARAMS, LEAK, SURROGATE_KINDS, LifParams  # noqa: F401
from snnexp.ops.kernels.params import C_TYPES as _C_TYPES

MIN_PER_THREAD = 1 << 15  # below this many neurons per thread, one thread is faster than handing out work


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
    """`max_pool` of the spikes `forward` would give, without them (ops/pooled.py): (y [T * B, C, Ho, Wo] in x's
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
    """`backward` of neurons whose spikes went into `max_pool` (ops/pooled.py): from the pool's dL/dy
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
