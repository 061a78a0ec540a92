"""A spiking layer and the max pooling after it as one op, `snnexp::lif_max_pool`: the papers' block `SN-MPk2s2`.

Separately, the pool's backward writes dL/dspikes, a dense tensor the size of the layer's spikes that is zero
except at one position per window, and the neuron's backward reads it back: two passes over the largest tensor of
the layer. Here the neuron's backward takes the gradient at its spikes straight from the pool's dL/dy and the
positions of the window maxima (kernels/lif_cpu.c, `lif_pool_backward`): per block of neurons it gathers into a
small buffer that stays in cache, so dL/dspikes never exists, and the spikes themselves are freed as soon as the
forward has pooled them (only X and one byte per window are kept for backward, as before). The forward is the
two kernels one after the other (ops/fused.py, pool_cpu.c).

Spikes, pooled values, positions and gradients are those of the neuron followed by `snnexp.nn.pooling.MaxPool2d`
exactly (tests/test_pooled.py). `snnexp.nn.fusion.FusedBlock` takes this path (through nn/fusion.py's
lif_max_pool) for a neuron and such a pool that the network was built with as one block (SN-MP, BN-SN-MP), when both
run the CPU kernels and no hook watches either but the activity counters of a test pass: for them the op also
counts each neuron's spikes (`count`), so that a test pass with metrics keeps this path (tests/test_activity.py
checks the counts against the layers run apart).
NeuroBench's hooks need the spikes themselves: under them the block runs its layers apart.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from snnexp.ops.fused import (
    _empty_norm_grad,
    _gradients,
    _kernel_input,
    kernel_params,
    norm_op_args,
    op_args,
)
from snnexp.ops.kernels import cpu
from snnexp.ops.normalised import Norm, kernel_args


# norm, inner, batch: a BN before the neurons (ops/normalised.py), as in snnexp::lif_multistep
@torch.library.custom_op("snnexp::lif_max_pool", mutates_args=())
def _lif_pool_op(x: Tensor, tau_inv: Tensor, norm: Optional[Tensor], leak: str, v_threshold: float, v_reset: float,
                 soft_reset: bool, detach_reset: bool, surrogate: str, sg_a: float, sg_b: float, steps: int,
                 inner: int, batch: bool, kh: int, kw: int, channels_last: bool,
                 count: bool) -> Tuple[Tensor, Tensor, Tensor]:
    xk = _kernel_input(x, steps)
    norm_args = kernel_args(norm, inner, xk.dtype)
    params = kernel_params(tau_inv, "cpu", leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a,
                           sg_b)
    y, pos, counts = cpu.pool_forward(xk, params, steps, kh, kw, channels_last, *norm_args, count=count)
    T, B = (steps, x.shape[0]) if steps else x.shape[:2]
    counts = counts if count else x.new_empty(0)  # `count`: each neuron's spikes over the T steps and the batch
    return y.unflatten(0, (T, B)).to(x.dtype), pos, counts


@_lif_pool_op.register_fake
def _(x, tau_inv, norm, leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a, sg_b, steps, inner,
      batch, kh, kw, channels_last, count):
    T, (B, C, H, W) = (steps, x.shape) if steps else (x.shape[0], x.shape[1:])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty(T * B, C, H // kh, W // kw, dtype=x.dtype, device=x.device, memory_format=fmt)
    maps = cpu.maps_shape((T * B, C, H // kh, W // kw), channels_last)
    counts = x.new_empty((C, H, W) if count else (0,))
    return y.unflatten(0, (T, B)), torch.empty(maps, dtype=torch.uint8, device=x.device), counts


@torch.library.custom_op("snnexp::lif_max_pool_backward", mutates_args=())
def _lif_pool_backward_op(x: Tensor, grad_y: Tensor, pos: Tensor, tau_inv: Tensor, norm: Optional[Tensor], leak: str,
                          v_threshold: float, v_reset: float, soft_reset: bool, detach_reset: bool, surrogate: str,
                          sg_a: float, sg_b: float, steps: int, inner: int, batch: bool, kh: int, kw: int,
                          channels_last: bool, want_tau: bool) -> Tuple[Tensor, Tensor, Tensor]:
    xk = _kernel_input(x, steps)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_y = grad_y.flatten(0, 1).contiguous(memory_format=fmt).to(xk.dtype)
    norm_args = kernel_args(norm, inner, xk.dtype)
    params = kernel_params(tau_inv, "cpu", leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a,
                           sg_b)
    grad_x, grad_tau, sums = cpu.pool_backward(xk, grad_y, pos, params, want_tau, steps, kh, kw, channels_last,
                                               *norm_args)
    return _gradients(x, xk, grad_x, grad_tau, tau_inv, sums, norm, inner, batch)


@_lif_pool_backward_op.register_fake
def _(x, grad_y, pos, tau_inv, norm, leak, v_threshold, v_reset, soft_reset, detach_reset, surrogate, sg_a, sg_b,
      steps, inner, batch, kh, kw, channels_last, want_tau):
    return torch.empty_like(x), torch.empty_like(tau_inv), _empty_norm_grad(norm, x)


def _setup_context(ctx, inputs, output):
    x, tau_inv, norm, *params = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(x, tau_inv, norm, output[1])
    ctx.params = params[:-1]  # not `count`: the backward is the same


def _backward(ctx, grad_y, _grad_pos, _grad_counts):
    x, tau_inv, norm, pos = ctx.saved_tensors
    want_tau = ctx.needs_input_grad[1]
    grad_x, grad_tau, grad_norm = _lif_pool_backward_op(x, grad_y, pos, tau_inv, norm, *ctx.params, want_tau)
    return (grad_x, grad_tau if want_tau else None, grad_norm if norm is not None else None) \
        + (None,) * (len(ctx.params) + 1)


_lif_pool_op.register_autograd(_backward, setup_context=_setup_context)


def lif_pool(x: Tensor, dynamics: tuple, kh: int, kw: int, steps: int = 0, norm: Optional[Norm] = None,
             count: bool = False):
    """The max pool (kh x kw windows, stride kh x kw) of the spikes of neurons with these settings (a neuron's
    dynamics(): 1/tau, surrogate, V_th, V_reset, decay_input, detach_reset) through the joint op, as
    [T, B, C, H // kh, W // kw]; x is [T, B, C, H, W], or with `steps` one step's input [B, C, H, W] fed at each of
    `steps` steps; with `norm`, of BN(x). With `count`: (that output, each neuron's spike count [C, H, W] over the
    steps and the batch). The caller checks that the op applies (`joinable_input`, snnexp.nn.fusion.pool_joins)."""
    tau, *args = op_args(*dynamics, x.device)
    params, inner, batch = norm_op_args(norm)
    y, _, counts = _lif_pool_op(x, tau, params, *args, int(steps), inner, batch, kh, kw,
                                is_channels_last(x if steps else x[0]), count)
    return (y, counts) if count else y


def joinable_input(x: Tensor, steps: int, kh: int, count: bool = False) -> bool:
    """x is laid out as the joint op reads it: a float32 or float64 CPU tensor of 4-d steps, one dense block per step
    in NCHW or channels_last order. To `count` the spikes the windows must also divide the map's height: the kernel
    leaves the rows below the last window out."""
    step = x if steps else x[0]
    dense = step.is_contiguous() or is_channels_last(step)
    seq_ok = steps > 0 or (x.dim() == 5 and x.shape[0] > 0 and x.stride(0) == step.numel())
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and dense and step.dim() == 4
            and seq_ok and (not count or step.shape[-2] % kh == 0))


def is_channels_last(step: Tensor) -> bool:
    """A 4-d map in channels_last order (and not also contiguous, as a map with one channel or one pixel is)."""
    return step.dim() == 4 and step.is_contiguous(memory_format=torch.channels_last) and not step.is_contiguous()
