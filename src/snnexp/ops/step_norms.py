"""The BNs whose output depends on the time step, TEBN and BNTT (snnexp.nn.norms), as ops that pass over the data
fewer times than the same layers written with torch's BN, the way SpikingJelly and snnTorch write them
(bench/bench_norms.py measures both).

TEBN, y[t] = p[t] (w x_hat[t] + b): written as BN then a multiplication by p, it writes BN's output, reads it again
and keeps it for p's gradient, on top of the input BN keeps. Here the statistics pass (the one PyTorch's BN runs,
`norm_statistics`) gives mean and invstd, and y = x a[t] + c[t] with a[t] = p[t] w invstd and
c[t] = p[t] (b - mean w invstd) is formed in one pass; only x is kept. With M values per channel and the per-step
sums S0[t] = sum g[t], S1[t] = sum g[t] x_hat[t] of the output gradient g (one pass over g and x), backward is BN's
backward for the gradient p[t] g[t] of BN's output:

    dL/dp[t] = sum_c (w S1[t] + b S0[t])      dL/dw = sum_t p[t] S1[t]      dL/db = sum_t p[t] S0[t]
    dL/dx[t] = w invstd (p[t] g[t] - dL/db / M - x_hat dL/dw / M)           (the last two terms in training only)

BNTT, y[t] = BN_t(x[t]): torch's BN run on each step as its own tensor, the outputs stacked, copies every output
once more, forward and backward (the stack and its gradient). Here each step's BN writes into its place in one
output tensor, and its backward into its place in one input gradient.

Both take float32 and float64 CPU inputs whose parameters have the input's dtype, outside torch.compile (`takes`);
on CUDA, under autocast or compile the layers run torch's BN instead.
"""

from typing import List, Tuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from snnexp.ops.normalised import norm_statistics

aten = torch.ops.aten


def takes(x: Tensor, values: int, params) -> bool:
    """The ops below compute the layers on x: a float32 or float64 CPU tensor (where they are measured and tested;
    on CUDA torch's BN runs), with parameters of its dtype, more than one of whose `values` each channel's statistics
    are taken over (with one, torch's BN says what is wrong), run eagerly (torch.compile traces the layers' torch ops
    instead: its decompositions resize the `out=` tensors BNTT's op writes into)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and values > 1
            and all(p is None or p.dtype == x.dtype for p in params) and not torch.compiler.is_compiling())


def scaled_batch_norm(bn: _BatchNorm, scale: Tensor, x: Tensor) -> Tensor:
    """TEBN: scale[t] * bn(x)[t] for x [T, B, C, ...] (module docstring), bn's statistics over all of x; bn's running
    statistics are updated as its own forward would update them."""
    batch = bn.training or bn.running_mean is None
    with torch.no_grad():
        mean, invstd = norm_statistics(bn, x.flatten(0, 1), x.numel() // x.shape[2], batch)
    weight = bn.weight if bn.affine else torch.ones_like(mean, dtype=x.dtype)
    bias = bn.bias if bn.affine else torch.zeros_like(mean, dtype=x.dtype)
    return _ScaledBatchNorm.apply(x, weight, bias, scale, mean.to(x.dtype, copy=True), invstd, batch)


class _ScaledBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, mean, invstd, batch):
        ctx.save_for_backward(x, weight, bias, scale, mean, invstd)
        ctx.batch = batch
        alpha = weight.double() * invstd
        a = scale.double()[:, None] * alpha  # [T, C]
        c = scale.double()[:, None] * (bias.double() - mean.double() * alpha)
        return torch.mul(x, _per_step(a, x)).add_(_per_step(c, x))

    @staticmethod
    def backward(ctx, g):
        x, weight, bias, scale, mean, invstd = ctx.saved_tensors
        s1, s0 = _step_sums(g, x, mean, invstd)
        w, b, p = weight.double(), bias.double(), scale.double()
        grad_scale, grad_weight, grad_bias = s1 @ w + s0 @ b, p @ s1, p @ s0
        k1 = w * invstd
        dx = torch.mul(g, _per_step(p[:, None] * k1, x))
        if ctx.batch:
            values = x.numel() // x.shape[2]
            k2 = -k1 * invstd * grad_weight / values  # dx's term in x_hat, written as k2 x + k3
            k3 = -k1 * grad_bias / values - k2 * mean.double()
            dx.addcmul_(x, _per_step(k2[None], x)).add_(_per_step(k3[None], x))
        grads = (grad_weight.to(weight.dtype), grad_bias.to(bias.dtype), grad_scale.to(scale.dtype))
        return (dx, *grads, None, None, None)


def _per_step(k: Tensor, x: Tensor) -> Tensor:
    """k [T, C] (or [1, C]) in x's dtype, shaped to multiply x [T, B, C, ...]."""
    return k.to(x.dtype).view(k.shape[0], 1, k.shape[1], *[1] * (x.dim() - 3))


def _step_sums(g: Tensor, x: Tensor, mean: Tensor, invstd: Tensor) -> Tuple[Tensor, Tensor]:
    """([T, C] sum of g[t] x_hat[t], [T, C] sum of g[t]) in float64: per step, the sums BN's backward forms (its
    gradients of weight and bias), by its own kernel, with x_hat = (x - mean) invstd."""
    ones = torch.ones_like(mean)  # running variance 1, eps 0: BN's eval-mode backward then sums g (x - mean)
    sums = [aten.native_batch_norm_backward(g_t, x_t, None, mean, ones, None, None, False, 0.0, [False, True, True])
            for g_t, x_t in zip(g.unbind(0), x.unbind(0))]
    centred = torch.stack([s[1] for s in sums]).double()
    return centred * invstd, torch.stack([s[2] for s in sums]).double()


def per_step_batch_norm(bns: List[_BatchNorm], x: Tensor) -> Tensor:
    """BNTT: bns[t](x[t]) for each step t of x [T, B, C, ...] (module docstring), each BN's running statistics updated
    as its own forward would update them."""
    calls = [_bn_call(bn) for bn in bns]
    return _PerStepBatchNorm.apply(x, bns, calls, *[bn.weight for bn in bns])


def _bn_call(bn: _BatchNorm) -> tuple:
    """(running mean, running variance, training, momentum) of bn's next call, as torch's _BatchNorm.forward picks
    them (a step counted; momentum None: the cumulative average)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    tracked = not bn.training or bn.track_running_stats
    return (bn.running_mean if tracked else None, bn.running_var if tracked else None,
            bn.training or bn.running_mean is None, momentum)


class _PerStepBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bns, calls, *weights):
        y = torch.empty_like(x)
        saved = x.new_empty(2, x.shape[0], x.shape[2])  # each step's mean and invstd, for backward
        for t, (bn, (mean, var, training, momentum)) in enumerate(zip(bns, calls)):
            aten.native_batch_norm.out(x[t], weights[t], None, mean, var, training, momentum, bn.eps, out=y[t],
                                       save_mean=saved[0, t], save_invstd=saved[1, t])
        ctx.save_for_backward(x, saved, *weights)
        ctx.bns, ctx.calls = bns, calls
        return y

    @staticmethod
    def backward(ctx, g):
        x, saved, *weights = ctx.saved_tensors
        dx, dw, db = torch.empty_like(x), torch.empty_like(saved[0]), torch.empty_like(saved[0, 0])
        for t, (bn, (mean, var, training, _)) in enumerate(zip(ctx.bns, ctx.calls)):
            aten.native_batch_norm_backward.out(g[t], x[t], weights[t], mean, var, saved[0, t], saved[1, t], training,
                                                bn.eps, [True, True, True], out0=dx[t], out1=dw[t], out2=db)
        return (dx, None, None, *dw.unbind(0))
