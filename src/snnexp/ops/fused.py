"""Fused multi-step LIF / IF: the whole sequence in one kernel call forward and one backward, instead of
autograd recording several tensor ops per time step. C on the CPU (kernels/lif_cpu.c), Triton on CUDA
(kernels/cuda.py); both registered as one PyTorch custom op, `snnexp::lif_multistep`, with its backward, so
that `torch.compile` of a model keeps the op whole instead of breaking its graph at every neuron.

The maths is that of `functional.lif_multistep_reference` (the definition; tests compare the two, in
float64 to 1e-10 and in float32 to float32 tolerance). Nothing is saved for backward but the input X:
backward recomputes H[t] block by block (S[t] = H[t] >= V_th exactly). With g_S[t] the gradient arriving
at the spikes and g_V[t] the one carried back from step t+1:

    sg        = surrogate'(H[t] - V_th)
    dV/dH     = 1 - S[t] + (V_reset - H[t]) sg   hard reset (the sg term only without detach_reset)
              = 1 - V_th sg                        soft reset (likewise)
    g_H       = g_S[t] sg + g_V[t] dV/dH
    g_X[t]    = g_H / tau (decay_input) or g_H;    g_V[t-1] = g_H (1 - 1/tau)   (IF: 1/tau = 0)
    g_(1/tau) += g_H (X[t] - (V[t-1] - V_reset)) = g_H (H[t] - V[t-1]) tau   (decay_input)
              += -g_H (V[t-1] - V_reset)                                    (otherwise)

Where no kernel can run (no C compiler, no Triton, another device) `lif_multistep_fused` runs the reference
implementation instead and says so once.
"""

import importlib
import warnings
from typing import Dict, Optional, Tuple, Union

import torch

from snnexp.ops.kernels.cpu import empty_steps
from snnexp.ops.kernels.params import LifParams
from snnexp.ops.normalised import Norm, input_grad, kernel_args

Tensor = torch.Tensor
_KERNELS = {"cpu": "snnexp.ops.kernels.cpu", "cuda": "snnexp.ops.kernels.cuda"}  # imported on first use
def _kernel(device_type: str):
    return importlib.import_module(_KERNELS[device_type])


def _check(device_type: str) -> Optional[str]:
    reason = f"no fused kernel for device '{device_type}'" if device_type not in _KERNELS \
        else _kernel(device_type).available()
    if reason is not None:
        warnings.warn(f"snnexp: fused neuron kernel unavailable ({reason}); neurons use the reference "
                      "implementation, which is slower", RuntimeWarning, stacklevel=3)
    return reason


def kernel_unavailable(device_type: str) -> Optional[str]:
    """None if a fused kernel runs on this kind of device, else why not (said once, as a warning)."""
    if device_type not in _UNAVAILABLE:
        _UNAVAILABLE[device_type] = _check(device_type)
    return _UNAVAILABLE[device_type]


# Decided before any forward, so that torch.compile finds a plain dict lookup here rather than an import or a
# compiler run to trace: CUDA at import (importing Triton compiles nothing), the CPU when the first module that runs
# its kernels is built (SpikingNeuron, MaxPool2d: `prepare_cpu_kernels`), which compiles them once per machine.
# Importing snnexp runs no compiler.
_UNAVAILABLE: Dict[str, Optional[str]] = {}
if torch.cuda.is_available():
    kernel_unavailable("cuda")


def kernels_ready(device_type: str) -> bool:
    """Whether the kernels for this kind of device are built and run (without building them now)."""
    return device_type in _UNAVAILABLE and _UNAVAILABLE[device_type] is None


def prepare_cpu_kernels() -> None:
    """Build (or load) the CPU kernels now, if not yet done in this process: called when a module that runs them is
    built, so that the build (once per machine, with its one line of notice) happens there, not at import or
    inside a traced forward."""
    kernel_unavailable("cpu")


def one_block_per_step(x: Tensor) -> bool:
    """True if x[t] is one dense block of memory at offset t * x[0].numel(), whatever the order of the other
    dims (channels_last included): the kernels see [T, N] and outputs made by empty_like keep that order."""
    if x.shape[0] > 1 and x.stride(0) != x[0].numel():
        return False
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride()[1:], x.shape[1:]) if sz > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _kernel_input(x: Tensor, steps: int = 0) -> Tensor:
    """x as the kernels take it: float32 or float64 (bfloat16 / float16 widen to float32, spikes are exact),
    one dense block per time step (with `steps`: x is one step, one dense block)."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return x if one_block_per_step(x.unsqueeze(0) if steps else x) else x.contiguous()


def _spikes_order(grad: Tensor, xk: Tensor, steps: int) -> Tensor:
    """The gradient at the spikes in the spikes' memory order, which is xk's (with `steps`: xk's at every step)."""
    strides = (xk.numel(), *xk.stride()) if steps else xk.stride()
    if grad.dtype == xk.dtype and grad.stride() == strides:
        return grad
    return (empty_steps(xk, steps) if steps else torch.empty_like(xk)).copy_(grad)


def _tau_value(tau_inv: Tensor, device_type: str):
    return tau_inv.item() if device_type == "cpu" else tau_inv  # the Triton kernel reads it on the GPU


def kernel_params(tau_inv: Tensor, device_type: str, leak: str, v_threshold: float, v_reset: float,
                  soft_reset: bool, detach_reset: bool, surrogate: str, sg_a: float, sg_b: float) -> LifParams:
    """The ops' settings (op_args, in its order) as the record the kernels take, tau_inv as the device reads it."""
    return LifParams(leak, _tau_value(tau_inv, device_type), v_threshold, v_reset, soft_reset, detach_reset,
                     surrogate, sg_a, sg_b)


# steps = 0: x is the sequence [T, ...]. steps = T > 0: x is one step's input [...], the same at every one of T
# steps (direct coding), read T times by the kernel instead of copied T times; its gradient is the steps' sum.
# norm: a BN before the neurons (ops/normalised.py; CPU only): its [4, C] params, `inner` and `batch` (Norm).
@torch.library.custom_op("snnexp::lif_multistep", mutates_args=())
def _lif_op(x: Tensor, tau_inv: Tensor, norm: Optional[Tensor], leak: str, v_threshold: float, v_reset: float,
            soft_reset: bool, detach_reset: bool, surrogate: str, sg_a: float, sg_b: float, steps: int, inner: int,
            batch: bool) -> Tensor:
    xk = _kernel_input(x, steps)
    norm_args = kernel_args(norm, inner, xk.dtype)
    params = kernel_params(tau_inv, x.device.type, leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate,
                           sg_a, sg_b)
    spikes = _kernel(x.device.type).forward(xk, params, steps, *norm_args)
    return spikes.to(x.dtype)


@_lif_op.register_fake
def _(x, tau_inv, norm, leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a, sg_b, steps, inner,
      batch):
    if not steps:
        return torch.empty_like(x)
    return empty_steps(_kernel_input(x, steps), steps).to(x.dtype)  # the spikes as the kernels make them


@torch.library.custom_op("snnexp::lif_multistep_backward", mutates_args=())
def _lif_backward_op(x: Tensor, grad_spikes: Tensor, tau_inv: Tensor, norm: Optional[Tensor], leak: str,
                     v_threshold: float, v_reset: float, soft_reset: bool, detach_reset: bool, surrogate: str,
                     sg_a: float, sg_b: float, steps: int, inner: int, batch: bool,
                     want_tau: bool) -> Tuple[Tensor, Tensor, Tensor]:
    device, xk = x.device.type, _kernel_input(x, steps)
    params = kernel_params(tau_inv, device, leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a,
                           sg_b)
    norm_args = kernel_args(norm, inner, xk.dtype)
    grad_x, grad_tau, sums = _kernel(device).backward(xk, _spikes_order(grad_spikes, xk, steps), params, want_tau,
                                                       steps, *norm_args)
    return _gradients(x, xk, grad_x, grad_tau, tau_inv, sums, norm, inner, batch)


@_lif_backward_op.register_fake
def _(x, grad_spikes, tau_inv, norm, leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a, sg_b,
      steps, inner, batch, want_tau):
    return torch.empty_like(x), torch.empty_like(tau_inv), _empty_norm_grad(norm, x)


def _gradients(x, xk, grad_x, grad_tau, tau_inv, sums, norm, inner: int, batch: bool):
    """The backward ops' outputs from a kernel's: (dL/dx in x's dtype, dL/d(1/tau) as tau_inv, dL/dnorm or an empty
    tensor); with a BN, grad_x is dL/dBN(x), made into dL/dx here (normalised.input_grad)."""
    grad_tau = torch.as_tensor(grad_tau, dtype=tau_inv.dtype, device=tau_inv.device).reshape(tau_inv.shape)
    if norm is None:
        return grad_x.to(x.dtype), grad_tau, _empty_norm_grad(norm, x)
    grad_x, grad_norm = input_grad(xk, grad_x, sums, norm.to(xk.dtype), inner, batch)
    return grad_x.to(x.dtype), grad_tau, grad_norm.to(norm.dtype)


def _empty_norm_grad(norm: Optional[Tensor], x: Tensor) -> Tensor:
    return torch.empty(0, dtype=x.dtype, device=x.device) if norm is None else torch.empty_like(norm)


def _setup_context(ctx, inputs, output):
    x, tau_inv, norm, *params = inputs
    ctx.save_for_backward(x, tau_inv, norm)
    ctx.params = params


def _backward(ctx, grad_spikes):
    x, tau_inv, norm = ctx.saved_tensors
    want_tau = ctx.needs_input_grad[1]
    grad_x, grad_tau, grad_norm = _lif_backward_op(x, grad_spikes, tau_inv, norm, *ctx.params, want_tau)
    return (grad_x, grad_tau if want_tau else None, grad_norm if norm is not None else None) \
        + (None,) * len(ctx.params)


_lif_op.register_autograd(_backward, setup_context=_setup_context)


def lif_multistep_fused(
    x_seq: Tensor,
    tau_inv: Union[float, Tensor, None],
    surrogate,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    steps: int = 0,
    norm: Optional[Norm] = None,
) -> Tensor:
    """Spikes of `functional.lif_multistep_reference`, through the fused kernel. tau_inv = None is IF; a
    tensor (PLIF) gets its gradient. With `steps`, x_seq is one step's input [B, ...] fed at each of `steps`
    steps (direct coding): read, never copied, and its gradient is the sum over the steps. The surrogate must
    be one the kernels know (`kernel_args()`), and a kernel must run on x's device (`kernel_unavailable`; the
    neuron modules and nn.neurons.lif_multistep run the reference where none does).
    `norm` (CPU kernels only): a BN before the neurons, applied to x inside the op (ops/normalised.py)."""
    spec = surrogate.kernel_args()
    if spec is None:
        raise ValueError(f"{type(surrogate).__name__} has no fused kernel; use the reference implementation")
    if norm is not None and (x_seq.device.type != "cpu" or kernel_unavailable("cpu")):
        raise ValueError("a BN joined with the neurons needs the CPU kernels; run the BN as its own layer")
    unavailable = kernel_unavailable(x_seq.device.type)
    if unavailable:
        raise ValueError(f"no fused kernel here ({unavailable}): snnexp.nn.neurons.lif_multistep runs the reference "
                         "definition instead")
    if not steps and x_seq.shape[0] > 1 and x_seq.stride(0) == 0:  # a repeated view (direct coding's encoder)
        x_seq, steps = x_seq[0], x_seq.shape[0]
    tau, *args = op_args(tau_inv, surrogate, v_threshold, v_reset, decay_input, detach_reset, x_seq.device)
    params, inner, batch = norm_op_args(norm)
    return _lif_op(x_seq, tau, params, *args, int(steps), inner, batch)


def norm_op_args(norm: Optional[Norm]) -> tuple:
    """A Norm as the ops take it: (params or None, inner, batch)."""
    return (None, 1, False) if norm is None else (norm.params, norm.inner, norm.batch)


def op_args(tau_inv, surrogate, v_threshold: float, v_reset: Optional[float], decay_input: bool, detach_reset: bool,
            device) -> tuple:
    """A neuron's settings as the fused ops take them: (tau_inv tensor, leak, v_threshold, v_reset, soft_reset,
    detach_reset, surrogate name, sg_a, sg_b). Separate arguments because a torch.library op's schema takes only
    tensors and scalars (torch.compile traces them); inside, the ops pass the kernels one record (kernels/params.py,
    LifParams, a C struct by pointer)."""
    name, sg_a, sg_b = surrogate.kernel_args()
    leak = "if" if tau_inv is None else ("decay_input" if decay_input else "plain")
    if not isinstance(tau_inv, Tensor):  # float64 holds the Python float exactly; the kernel rounds it like torch
        tau_inv = torch.tensor(0.0 if tau_inv is None else float(tau_inv), dtype=torch.float64, device=device)
    soft_reset = v_reset is None
    return (tau_inv, leak, float(v_threshold), 0.0 if soft_reset else float(v_reset), soft_reset, bool(detach_reset),
            name, float(sg_a), float(sg_b))
