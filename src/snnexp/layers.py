"""Layers that work on time-major sequences [T, B, ...]: normalisation, dropout, folding, readouts."""

import torch
from torch import nn


class SeqToANN(nn.Module):
    """Run a stateless layer once on the whole sequence by folding time into the batch:
    [T, B, ...] -> [T*B, ...] -> layer -> [T, B, ...]."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x_seq):
        y = self.module(x_seq.flatten(0, 1))
        return y.unflatten(0, x_seq.shape[:2])


class SeqFlatten(nn.Module):
    """[T, B, C, H, W] -> [T, B, C*H*W]."""

    def forward(self, x_seq):
        return x_seq.flatten(2)


class BatchNormThroughTime(nn.modules.batchnorm._BatchNorm):
    """BN on input currents (Ledinauskas 2020, PLIF): one BN per channel whose statistics are taken
    over time and batch together (and space, for conv layers). Works for [T, B, C] and [T, B, C, H, W]."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least [T*B, C] input, got shape {tuple(x.shape)}")

    def forward(self, x_seq):
        return super().forward(x_seq.flatten(0, 1)).unflatten(0, x_seq.shape[:2])


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

    def __init__(self, num_features=None):
        super().__init__()


class SeqDropout(nn.Module):
    """Dropout with one mask per sample, shared by all time steps (as in the PLIF code): dropping a
    different unit at every step would only add noise to the rate."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x_seq):
        if not self.training or self.p == 0.0:
            return x_seq
        mask = torch.empty_like(x_seq[0]).bernoulli_(1.0 - self.p) / (1.0 - self.p)
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
