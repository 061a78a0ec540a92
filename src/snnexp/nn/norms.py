"""The norm config group: BN through time (Ledinauskas 2020, PLIF), threshold-dependent BN (tdBN, Zheng 2021),
NeuNorm (Wu 2019) and none. Equations: docs/science.md, section 3. The BNs also run inside the neuron's kernel when
the network is built with its blocks joined (snnexp.nn.fusion, snnexp.ops.normalised)."""

import torch
import torch.nn.functional as F
from torch import nn

from snnexp.config import require
from snnexp.nn.neurons.repeated import Repeated, repeat_in_time

__all__ = ["BatchNormThroughTime", "NeuNorm", "NoNorm", "ThresholdDependentBatchNorm"]


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
        require("norm.k_tau2", k_tau2)
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
