"""The CUDA kernel: the same two passes as lif_cpu.c, written in Triton.

One program handles BLOCK neurons over all T steps. Backward first recomputes H[t] into a [T, N] scratch
tensor (a GPU has no per-thread buffer of run-time length), then runs back in time. dL/d(1/tau) is summed
per program and the partial sums added by torch, so the result does not depend on scheduling.
Tests run these kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1).
"""

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only install of torch comes without Triton
    triton = None

from snnexp.ops.kernels.cpu import empty_steps
from snnexp.ops.kernels.params import LEAK, SURROGATE_KINDS, LifParams

BLOCK = 256


def available() -> Optional[str]:
    return None if triton is not None else "Triton is not installed"


if triton is not None:

    @triton.jit
    def _charge(v, x, tau_inv, leak_to, LEAK: tl.constexpr):
        if LEAK == 0:
            h = v + x
        elif LEAK == 1:
            h = v + (x - (v - leak_to)) * tau_inv
        else:
            h = v - (v - leak_to) * tau_inv + x
        return h

    @triton.jit
    def _reset(h, s, v_th, v_reset, SOFT: tl.constexpr):
        if SOFT:
            v = tl.where(s, h - v_th, h)
        else:
            v = tl.where(s, v_reset, h)
        return v

    @triton.jit
    def _surrogate_grad(x, a, b, KIND: tl.constexpr):
        if KIND == 0:  # atan, a = alpha
            y = 1.5707963267948966 * a * x
            g = (a / 2) / (1 + y * y)
        elif KIND == 1:  # sigmoid, a = alpha
            s = tl.sigmoid(a * x)
            g = a * s * (1 - s)
        elif KIND == 2:  # rect, a = width, b = height
            g = tl.where(tl.abs(x) < a / 2, b, 0.0)
        elif KIND == 3:  # triangle
            g = tl.maximum(1 - tl.abs(x) / a, 0.0) * b
        else:  # fast sigmoid, a = slope
            y = 1 + a * tl.abs(x)
            g = 1 / (y * y)
        return g

    @triton.jit
    def _forward_kernel(x_ptr, s_ptr, tau_ptr, T, N, v_th, v_reset,
                        LEAK: tl.constexpr, SOFT: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        tau_inv = tl.load(tau_ptr).to(x_ptr.dtype.element_ty)
        leak_to = 0.0 if SOFT else v_reset
        v = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty) + leak_to
        for t in range(T):
            x = tl.load(x_ptr + t * N + offs, mask=mask, other=0.0)
            h = _charge(v, x, tau_inv, leak_to, LEAK)
            s = (h - v_th) >= 0
            tl.store(s_ptr + t * N + offs, s.to(x_ptr.dtype.element_ty), mask=mask)
            v = _reset(h, s, v_th, v_reset, SOFT)

    @triton.jit
    def _backward_kernel(x_ptr, gs_ptr, gx_ptr, h_ptr, tau_ptr, partial_ptr, T, N, v_th, v_reset, sg_a, sg_b,
                         LEAK: tl.constexpr, SOFT: tl.constexpr, DETACH: tl.constexpr, KIND: tl.constexpr,
                         WANT_TAU: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        dtype = x_ptr.dtype.element_ty
        tau_inv = tl.load(tau_ptr).to(dtype)
        leak_to = 0.0 if SOFT else v_reset
        v = tl.zeros([BLOCK], dtype=dtype) + leak_to
        for t in range(T):  # forward again, keeping H
            h = _charge(v, tl.load(x_ptr + t * N + offs, mask=mask, other=0.0), tau_inv, leak_to, LEAK)
            tl.store(h_ptr + t * N + offs, h, mask=mask)
            v = _reset(h, (h - v_th) >= 0, v_th, v_reset, SOFT)
        if LEAK == 0:
            keep = 1.0
        else:
            keep = 1 - tau_inv
        gv = tl.zeros([BLOCK], dtype=dtype)
        acc = tl.zeros([BLOCK], dtype=tl.float64 if dtype == tl.float64 else tl.float32)
        for i in range(T):  # and back
            t = T - 1 - i
            h = tl.load(h_ptr + t * N + offs, mask=mask, other=0.0)
            s = (h - v_th) >= 0
            sg = _surrogate_grad(h - v_th, sg_a, sg_b, KIND)
            if SOFT:
                if DETACH:
                    dv_dh = tl.zeros([BLOCK], dtype=dtype) + 1
                else:
                    dv_dh = 1 - v_th * sg
            else:
                dv_dh = tl.where(s, 0.0, 1.0)
                if not DETACH:
                    dv_dh = dv_dh + (v_reset - h) * sg
            gh = tl.load(gs_ptr + t * N + offs, mask=mask, other=0.0) * sg + gv * dv_dh
            if LEAK == 1:
                tl.store(gx_ptr + t * N + offs, gh * tau_inv, mask=mask)
            else:
                tl.store(gx_ptr + t * N + offs, gh, mask=mask)
            gv = gh * keep
            if WANT_TAU:
                hp = tl.load(h_ptr + (t - 1) * N + offs, mask=mask & (t > 0), other=0.0)
                v_prev = tl.where(t > 0, _reset(hp, (hp - v_th) >= 0, v_th, v_reset, SOFT), leak_to)
                if LEAK == 1:
                    acc += tl.where(mask, gh * (h - v_prev), 0.0)
                else:
                    acc += tl.where(mask, -gh * (v_prev - leak_to), 0.0)
        if WANT_TAU:
            tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


def _tau_tensor(tau_inv, like):
    return tau_inv.detach().reshape(()).to(like) if isinstance(tau_inv, torch.Tensor) \
        else torch.tensor(float(tau_inv), dtype=like.dtype, device=like.device)


def _repeated(x, steps: int):
    """x [...] fed at each of `steps` steps, as the [T, N] sequence the kernels read, in x's memory order at every
    step like the spikes the fake implementation predicts (the CPU kernel reads x in place; here it is copied)."""
    return empty_steps(x, steps).copy_(x.unsqueeze(0).expand(steps, *x.shape))


def forward(x, params: LifParams, steps: int = 0):
    x = _repeated(x, steps) if steps else x
    T, N = x.shape[0], x[0].numel()
    spikes = torch.empty_like(x)
    _forward_kernel[(triton.cdiv(N, BLOCK),)](x, spikes, _tau_tensor(params.tau_inv, x), T, N, params.v_th,
                                               params.v_reset, LEAK=LEAK[params.leak], SOFT=params.soft_reset,
                                               BLOCK=BLOCK)
    return spikes


def backward(x, grad_spikes, params: LifParams, want_tau: bool, steps: int = 0):
    """(grad_x, dL/d(1/tau) as a 0-d tensor, None: no BN joins the neurons on CUDA); with `steps`, grad_x is summed
    over the steps."""
    if steps:
        # grad_spikes comes in the spikes' memory order (fused._spikes_order), which is _repeated(x)'s
        grad_x, grad_tau, _ = backward(_repeated(x, steps), grad_spikes, params, want_tau)
        return grad_x.sum(0), grad_tau, None
    T, N = x.shape[0], x[0].numel()
    grid = triton.cdiv(N, BLOCK)
    grad_x, h_scratch = torch.empty_like(x), torch.empty_like(x)
    partial = torch.zeros(grid, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    tau = _tau_tensor(params.tau_inv, x)
    _backward_kernel[(grid,)](x, grad_spikes, grad_x, h_scratch, tau, partial, T, N, params.v_th, params.v_reset,
                              params.sg_a, params.sg_b, LEAK=LEAK[params.leak], SOFT=params.soft_reset,
                              DETACH=params.detach_reset, KIND=SURROGATE_KINDS[params.surrogate], WANT_TAU=want_tau,
                              BLOCK=BLOCK)
    grad_tau = partial.sum()
    if want_tau and params.leak == "decay_input":
        grad_tau = grad_tau / tau
    return grad_x, grad_tau, None
