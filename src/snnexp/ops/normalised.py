"""BN over time (norm=bn, tdbn) fused with the spiking layer after it: the papers' block `BN-SN` (and `BN-SN-MPk2s2`,
with ops/pooled.py), where BN normalises the input currents per channel over time, batch and space. (TEBN and BNTT,
whose output depends on the step, are not joined: snnexp.nn.fusion.)

Apart, BN reads X and writes BN(X), the neuron reads BN(X) again, and both keep a tensor of X's size for backward;
backward, BN reads dL/dBN(X) and X twice (once for its per-channel sums, once for dL/dX). Joined, the neuron kernels
(kernels/lif_cpu.c) form BN(X) = X alpha + beta on the fly from X, keep only X, and while they write dL/dBN(X) they
also add up the two per-channel sums BN's backward needs; one more pass (`norm_input_grad`) turns dL/dBN(X) into
dL/dX in place. What is left of BN is its statistics pass, `torch.batch_norm_update_stats`, the one PyTorch's BN
runs too. bench/bench_train_step.py measures the difference.

With x_hat = (X - mean) invstd and M values per channel, BN's backward in training (batch statistics) is

    dL/dw = sum dL/dY x_hat          dL/db = sum dL/dY
    dL/dX = w invstd (dL/dY - sum dL/dY / M - x_hat sum dL/dY x_hat / M)

and with running statistics (eval) dL/dX = w invstd dL/dY. Both are dL/dX = k1 dL/dY + k2 X + k3 per channel.
The numbers are those of BN followed by the neuron within float32 rounding (tests/test_normalised.py): the
statistics come from the same PyTorch call, but alpha and beta are formed here, so BN(X) may differ in its last bit.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from snnexp.ops.kernels import cpu


class Norm(NamedTuple):
    """A BN as the fused ops take it: params [4, C] (weight, bias, mean, invstd) in the input's dtype; `inner` the
    elements between channels (H * W for NCHW maps, 1 for channels_last maps and feature vectors); `batch` whether
    mean and invstd are the input's own statistics (training), whose gradient then is part of dL/dX."""
    params: Tensor
    inner: int
    batch: bool


def channel_inner(step: Tensor) -> Optional[int]:
    """The channel layout of one step's input [B, C, ...] as the kernels read it, or None if they cannot."""
    if step.is_contiguous():
        return step[0, 0].numel()
    if step.dim() == 4 and step.is_contiguous(memory_format=torch.channels_last):
        return 1
    return None


def batch_norm(bn: _BatchNorm, x: Tensor, steps: int = 0) -> Optional[Norm]:
    """`bn` on x [T, B, C, ...] (with `steps`: x [B, C, ...] fed at each of `steps` steps) as a Norm for the fused
    ops, updating the running statistics as bn's own forward would; None where the ops cannot take it (then run
    bn itself), without touching bn."""
    step = x if steps else x[0]
    one_block_per_step = steps or x.shape[0] == 1 or x.stride(0) == step.numel()
    if not one_block_per_step or step.dim() < 2 or step.shape[1] != bn.num_features or channel_inner(step) is None:
        return None
    values = x.numel() // step.shape[1] * max(steps, 1)  # per channel, over the T steps
    batch = bn.training or bn.running_mean is None
    if batch and values <= 1:  # BN itself says what is wrong
        return None
    with torch.no_grad():
        mean, invstd = norm_statistics(bn, x if steps else x.flatten(0, 1), values, batch)
    weight = bn.weight if bn.affine else torch.ones_like(mean)
    bias = bn.bias if bn.affine else torch.zeros_like(mean)
    params = torch.stack([weight.to(x.dtype), bias.to(x.dtype), mean.to(x.dtype), invstd.to(x.dtype)])
    return Norm(params.contiguous(), channel_inner(step), batch)


def norm_statistics(bn: _BatchNorm, x: Tensor, values: int, batch: bool):
    """(mean, invstd) per channel: x's own (updating bn's running statistics when it tracks them, with the unbiased
    variance of all `values`), or bn's running ones. invstd is formed in float64, as PyTorch's BN does."""
    if not batch:
        return bn.running_mean, (bn.running_var.double() + bn.eps).rsqrt()
    mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_((var * (values / (values - 1))).to(bn.running_var.dtype), momentum)
    return mean, (var.double() + bn.eps).rsqrt()


def kernel_args(norm: Optional[Tensor], inner: int, dtype: torch.dtype) -> tuple:
    """What the CPU kernels take for the BN `norm` [4, C] (weight, bias, mean, invstd): ([4, C] alpha, beta, mean,
    invstd in `dtype`, inner), formed as PyTorch's BN forms them (alpha = invstd w, beta = b - mean alpha); () for
    no BN."""
    if norm is None:
        return ()
    w, b, mean, invstd = norm.detach().to(dtype)
    alpha = invstd * w
    return torch.stack([alpha, b - mean * alpha, mean, invstd]).contiguous(), inner


def input_grad(x: Tensor, grad: Tensor, sums: Tensor, norm: Tensor, inner: int, batch: bool):
    """(dL/dX, dL/dparams) from the kernels' dL/dBN(X) `grad` (overwritten) and their per-channel `sums` [2, C]
    (sum dL/dY, sum dL/dY x_hat) for the BN `norm` [4, C] (module docstring). x and grad: one memory order, x the
    values BN normalised (one step of them, with its gradient summed over the steps, for direct coding)."""
    w, _, mean, invstd = norm.double()
    sum_dy, sum_dy_xhat = sums
    k1 = w * invstd
    if batch:
        values = x.numel() // norm.shape[1]
        k2 = -k1 * invstd * sum_dy_xhat / values
        k3 = -k1 * sum_dy / values - k2 * mean
    else:
        k2 = k3 = torch.zeros_like(k1)
    cpu.norm_input_grad(x, grad, torch.stack([k1, k2, k3]).to(x.dtype).contiguous(), inner)
    grad_norm = torch.stack([sum_dy_xhat, sum_dy, torch.zeros_like(k1), torch.zeros_like(k1)])
    return grad, grad_norm.to(norm.dtype)
