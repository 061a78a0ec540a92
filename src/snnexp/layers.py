"""Layers that work on time-major sequences [T, B, ...]: normalisation, dropout, folding, readouts.

A sequence that is one [B, ...] tensor repeated at every step (direct coding: the encoder gives a view with a
time stride of 0) need not be copied. A layer whose forward takes `steps` (its class attribute `repeated_input`
says what it gives) computes from one step's input x [B, ...] what T = steps copies of it would give: the layers
that treat every step alike and hold no state (conv, linear, pooling, BN, dropout, flatten: "one step") their
output for one step, computed once; a neuron ("sequence") its spikes [T, B, ...], with x read T times in place.
`run_layers` runs the leading layers of a network that way.
Outputs, gradients and BN statistics are those of the T copies (tests/test_layers.py checks it in float64): the
gradient of the repeated result is summed over its steps, which is what the T copies' gradients add up to, for BN
too (the batch mean and variance of T equal copies are those of one).
"""

import torch
import torch.nn.functional as F
from torch import nn

from snnexp.neurons.functional import charge
from snnexp.neurons.fused import one_block_per_step


def repeated_in_time(x_seq: torch.Tensor) -> bool:
    """Whether `x_seq` is one tensor seen at every step: a view whose time dimension has stride 0."""
    return x_seq.dim() > 1 and x_seq.shape[0] > 1 and x_seq.stride(0) == 0


def repeat_in_time(y: torch.Tensor, T: int) -> torch.Tensor:
    """[B, ...] -> a [T, B, ...] view of y at every step (no copy)."""
    return _RepeatInTime.apply(y, T) if y.requires_grad else y.unsqueeze(0).expand(T, *y.shape)


class _RepeatInTime(torch.autograd.Function):
    """expand() whose backward sums the steps' gradients into y's own memory order: autograd's sum of an
    expand gives a contiguous (NCHW) gradient, and BN and convolution backward on a channels_last y with an
    NCHW gradient take a slow path that costs more than running them once saved (bench/bench_train_step.py)."""

    @staticmethod
    def forward(ctx, y, T):
        ctx.layout = (y.shape, y.stride()) if _dense(y) else None
        return y.unsqueeze(0).expand(T, *y.shape)

    @staticmethod
    def backward(ctx, grad):
        if ctx.layout is None:
            return grad.sum(0), None
        out = torch.empty_strided(*ctx.layout, dtype=grad.dtype, device=grad.device)
        return torch.sum(grad, 0, out=out), None


def _dense(y: torch.Tensor) -> bool:
    """y's elements fill its memory without gaps or overlaps, in some order of its dims."""
    return one_block_per_step(y.unsqueeze(0))


def run_layers(layers, x_seq: torch.Tensor) -> torch.Tensor:
    """Run `layers` in order on x_seq [T, B, ...]. A repeated x_seq (module docstring) goes through the leading
    layers that take `steps` as one step, [B, ...], until one of them gives the sequence (a neuron) or one
    cannot take it (then it gets the step repeated over T). (The papers' BN-SN-MP blocks run as one op when the
    network is built with them joined: snnexp.fusion.)"""
    layers = list(layers)
    if repeated_in_time(x_seq):
        x_seq, i = _run_repeated(layers, x_seq[0], x_seq.shape[0])
    else:
        i = 0
    for layer in layers[i:]:
        x_seq = layer(x_seq)
    return x_seq


def _run_repeated(layers, x: torch.Tensor, T: int):
    """The leading layers on x [B, ...] seen at each of T steps, as one step while they take it (module docstring):
    (the sequence they give, the next layer's index)."""
    i = 0
    while i < len(layers) and getattr(layers[i], "repeated_input", None) == "one step":
        x = layers[i](x, steps=T)
        i += 1
    if i < len(layers) and getattr(layers[i], "repeated_input", None) == "sequence":
        return layers[i](x, steps=T), i + 1
    return repeat_in_time(x, T), i


class SeqToANN(nn.Module):
    """Run a stateless layer once on the whole sequence by folding time into the batch:
    [T, B, ...] -> [T*B, ...] -> layer -> [T, B, ...]."""

    repeated_input = "one step"

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x_seq, steps: int = 0):
        if steps:
            return self.module(x_seq)
        y = self.module(x_seq.flatten(0, 1))
        return y.unflatten(0, x_seq.shape[:2])


class SeqFlatten(nn.Module):
    """[T, B, C, H, W] -> [T, B, C*H*W]."""

    repeated_input = "one step"

    def forward(self, x_seq, steps: int = 0):
        return x_seq.flatten(1 if steps else 2)


class BatchNormThroughTime(nn.modules.batchnorm._BatchNorm):
    """BN on input currents (Ledinauskas 2020, PLIF): one BN per channel whose statistics are taken
    over time and batch together (and space, for conv layers). Works for [T, B, C] and [T, B, C, H, W]."""

    repeated_input = "one step"

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least [T*B, C] input, got shape {tuple(x.shape)}")

    def forward(self, x_seq, steps: int = 0):
        if steps:
            return self._forward_steps(x_seq, steps)
        return super().forward(x_seq.flatten(0, 1)).unflatten(0, x_seq.shape[:2])

    def _forward_steps(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """BN of T copies of x [B, C, ...], computed on x: the same batch mean and (biased) variance, so the same
        output and the same running mean. Only the running variance differs: it is updated with the unbiased
        variance of the n T values, v n T / (n T - 1), where batch_norm on x used v n / (n - 1). The update is
        corrected from the buffers alone (C numbers), without another pass over x."""
        if x.numel() == x.shape[1]:  # one value per channel: only the T copies give BN a batch
            return self(repeat_in_time(x, T))[0]
        if not (self.training and self.track_running_stats):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        updated = self.running_var.clone()  # batch_norm updates it in place (and keeps it for backward)
        y = F.batch_norm(x, self.running_mean, updated, self.weight, self.bias, True, momentum, self.eps)
        with torch.no_grad():
            n = x.numel() // x.shape[1]
            unbiased_n = (updated - (1 - momentum) * self.running_var) / momentum  # v n / (n - 1)
            self.running_var.lerp_(unbiased_n * ((n - 1) * T / (n * T - 1)), momentum)
        return y


class ThresholdDependentBatchNorm(BatchNormThroughTime):
    """tdBN (Zheng et al. 2021): BN over (T, B, H, W) per channel, normalised to alpha * V_th.

    y = lambda * alpha * V_th * x_hat + beta is written, as in SpikingJelly, as a BN whose scale starts at
    alpha * V_th (lambda = 1): the same function, one parameter fewer."""

    def __init__(self, num_features, alpha: float = 1.0, v_threshold: float = 1.0, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.alpha, self.v_threshold = float(alpha), float(v_threshold)
        nn.init.constant_(self.weight, self.alpha * self.v_threshold)

    def extra_repr(self):
        return super().extra_repr() + f", alpha={self.alpha}, v_threshold={self.v_threshold}"


class NeuNorm(nn.Module):
    """NeuNorm (Wu et al. 2019): an auxiliary neuron per spatial position tracks the activity summed over
    the layer's F feature maps, and a trainable map U of the feature-map size subtracts it:

        x[t](i, j) = k_tau2 x[t-1](i, j) + (v / F) sum_f z_f[t](i, j),    with k_tau2 + v / F = 1
        y[t] = z[t] - U * x[t]

    In the paper z are a layer's output spikes and y feeds the next layer's weights (I = W (*) (o - U x)),
    so put the norm token after the neuron for that: `c128k3s1-SN-BN-c128k3s1-SN-BN-...` with
    norm=neunorm. A feature vector [T, B, F] is one position with F maps. U starts at 0 (the identity).
    The spatial size is taken from the first input."""

    def __init__(self, num_features: int, k_tau2: float = 0.9):
        super().__init__()
        if not 0 < k_tau2 < 1:
            raise ValueError(f"NeuNorm k_tau2 must be in (0, 1), got {k_tau2}")
        self.num_features, self.k_tau2 = int(num_features), float(k_tau2)
        self.u = nn.UninitializedParameter()

    def forward(self, z_seq):
        spatial = z_seq.shape[3:]  # (H, W), or () for a feature vector
        if isinstance(self.u, nn.UninitializedParameter):
            self.u.materialize(spatial, device=z_seq.device, dtype=z_seq.dtype)
            nn.init.zeros_(self.u)
        x = torch.zeros_like(z_seq[0, :, :1])
        out = []
        for z in z_seq:
            x = self.k_tau2 * x + (1.0 - self.k_tau2) * z.sum(1, keepdim=True)
            out.append(z - self.u * x)
        return torch.stack(out)

    def extra_repr(self):
        return f"{self.num_features}, k_tau2={self.k_tau2}"


class NoNorm(nn.Identity):
    """norm=none: accepts the channel count the network builder passes and does nothing."""

    repeated_input = "one step"

    def __init__(self, num_features=None):
        super().__init__()

    def forward(self, x, steps: int = 0):
        return x


class SeqDropout(nn.Module):
    """Dropout with one mask per sample, shared by all time steps (as in the PLIF code): dropping a
    different unit at every step would only add noise to the rate."""

    repeated_input = "one step"

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x_seq, steps: int = 0):
        if not self.training or self.p == 0.0:
            return x_seq
        mask = torch.empty_like(x_seq if steps else x_seq[0]).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x_seq * mask

    def extra_repr(self):
        return f"p={self.p}"


class RateReadout(nn.Module):
    """[T, B, K] output spikes -> [B, K] firing rates (mean over time)."""

    population = 1

    def forward(self, spikes):
        return spikes.mean(0)


class VotingReadout(RateReadout):
    """Voting layer (Wu 2019, PLIF): `population` output neurons per class; the class score is the mean
    firing rate of its population. [T, B, K * population] -> [B, K]."""

    def __init__(self, population: int = 10):
        super().__init__()
        if population < 1:
            raise ValueError(f"readout.population must be >= 1, got {population}")
        self.population = int(population)

    def forward(self, spikes):
        rate = spikes.mean(0)
        return rate.unflatten(-1, (-1, self.population)).mean(-1)

    def extra_repr(self):
        return f"population={self.population}"


class LeakyIntegrator(nn.Module):
    """Non-spiking output neurons (the readout layer of the temporal papers [Cramer 2022; Yin 2021]): a LIF
    membrane without threshold or reset, from rest V[-1] = 0,

        V[t] = V[t-1] + (X[t] - V[t-1]) / tau

    (the LIF charge of docs/science.md section 1 with V_reset = 0). [T, B, K] input currents -> [T, B, K]
    membrane potentials. A membrane readout puts it in place of the network's last spiking layer."""

    def __init__(self, tau: float = 2.0):
        super().__init__()
        if not tau >= 1:
            raise ValueError(f"readout.tau must be >= 1 (time steps; 1 passes the input through), got {tau}")
        self.tau = float(tau)

    def forward(self, x_seq):
        v = torch.zeros_like(x_seq[0])
        out = []
        for x in x_seq:
            v = charge(v, x, 1.0 / self.tau, 0.0, True)
            out.append(v)
        return torch.stack(out)

    def extra_repr(self):
        return f"tau={self.tau}"


class MembraneReadout(nn.Module):
    """Class scores from the membrane potential of non-spiking output neurons (`LeakyIntegrator`): its maximum
    over time (`max`, [Cramer 2022]), its mean (`mean`) or its value at the last step (`last`). The network's
    last spiking layer is replaced by LeakyIntegrator(tau) when the model is built (`output_layer`); the scores
    are potentials, not rates, so they go to cross-entropy (loss=ce_rate). [T, B, K] -> [B, K]."""

    population = 1
    REDUCTIONS = ("max", "mean", "last")

    def __init__(self, reduce: str = "max", tau: float = 2.0):
        super().__init__()
        if reduce not in self.REDUCTIONS:
            raise ValueError(f"readout.reduce must be one of {', '.join(self.REDUCTIONS)}, got {reduce!r}")
        LeakyIntegrator(tau)  # checks tau
        self.reduce, self.tau = reduce, float(tau)

    def output_layer(self) -> LeakyIntegrator:
        return LeakyIntegrator(self.tau)

    def forward(self, v_seq):
        if self.reduce == "max":
            return v_seq.amax(0)
        return v_seq.mean(0) if self.reduce == "mean" else v_seq[-1]

    def extra_repr(self):
        return f"reduce={self.reduce}, tau={self.tau}"
