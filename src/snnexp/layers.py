"""Layers that work on time-major sequences [T, B, ...]: normalisation, dropout, folding, readouts.

The layers that treat every time step alike and hold no state (SeqToANN, SeqFlatten, BN through time, NoNorm,
SeqDropout) also take direct coding's repeated input, `Repeated` (snnexp.neurons.repeated), and run on its one step
once. `run_layers` runs a network's layers in order and hands them a Repeated while they take it.
"""

import torch
import torch.nn.functional as F
from torch import nn

from snnexp.neurons.functional import charge
from snnexp.neurons.repeated import Repeated, repeat_in_time, repeated_in_time

__all__ = ["BatchNormThroughTime", "LeakyIntegrator", "MembraneReadout", "NeuNorm", "NoNorm", "RateReadout",
           "Repeated", "SeqDropout", "SeqFlatten", "SeqToANN", "ThresholdDependentBatchNorm", "VotingReadout", "feed",
           "repeat_in_time", "repeated_in_time", "run_layers"]


def run_layers(layers, x_seq) -> torch.Tensor:
    """Run `layers` in order on x_seq [T, B, ...] (or a Repeated). A view with time stride 0 (direct coding's
    encoder gives one) goes in as a Repeated: the leading layers that take one run on its one step (`feed`).
    (The papers' BN-SN-MP blocks run as one op where the network was built with them joined: snnexp.fusion.)"""
    x = Repeated.of(x_seq) if isinstance(x_seq, torch.Tensor) and repeated_in_time(x_seq) else x_seq
    for layer in layers:
        x = feed(layer, x)
    return x.expand() if isinstance(x, Repeated) else x


def feed(layer: nn.Module, x):
    """layer(x); a Repeated x is expanded to its sequence (a view) first where the layer cannot take it."""
    if isinstance(x, Repeated) and not getattr(layer, "takes_repeated", False):
        x = x.expand()
    return layer(x)


class SeqToANN(nn.Module):
    """Run a stateless layer once on the whole sequence by folding time into the batch:
    [T, B, ...] -> [T*B, ...] -> layer -> [T, B, ...]; a Repeated's one step through the layer once."""

    takes_repeated = True

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x_seq):
        if isinstance(x_seq, Repeated):
            return x_seq.map(self.module)
        y = self.module(x_seq.flatten(0, 1))
        return y.unflatten(0, x_seq.shape[:2])


class SeqFlatten(nn.Module):
    """[T, B, C, H, W] -> [T, B, C*H*W]."""

    takes_repeated = True

    def forward(self, x_seq):
        if isinstance(x_seq, Repeated):
            return x_seq.map(lambda x: x.flatten(1))
        return x_seq.flatten(2)


class BatchNormThroughTime(nn.modules.batchnorm._BatchNorm):
    """BN on input currents (Ledinauskas 2020, PLIF): one BN per channel whose statistics are taken
    over time and batch together (and space, for conv layers). Works for [T, B, C] and [T, B, C, H, W], and on a
    Repeated's one step (`_forward_steps`)."""

    takes_repeated = True

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least [T*B, C] input, got shape {tuple(x.shape)}")

    def forward(self, x_seq):
        if isinstance(x_seq, Repeated):
            return Repeated(self._forward_steps(x_seq.step, x_seq.T), x_seq.T)
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

    takes_repeated = True

    def __init__(self, num_features=None):
        super().__init__()

    def forward(self, x):
        return x


class SeqDropout(nn.Module):
    """Dropout with one mask per sample, shared by all time steps (as in the PLIF code): dropping a
    different unit at every step would only add noise to the rate."""

    takes_repeated = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x_seq):
        if not self.training or self.p == 0.0:
            return x_seq
        step = x_seq.step if isinstance(x_seq, Repeated) else x_seq[0]
        mask = torch.empty_like(step).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x_seq.map(lambda x: x * mask) if isinstance(x_seq, Repeated) else x_seq * mask

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
