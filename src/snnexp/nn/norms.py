"""The norm config group: one BN over time and batch (Ledinauskas 2020, PLIF), threshold-dependent BN (tdBN, Zheng
2021), temporal effective BN (TEBN, Duan 2022), a BN per time step (BNTT, Kim & Panda 2021), NeuNorm (Wu 2019) and
none. Equations: docs/science.md, section 3. The first two also run inside the neuron's kernel when the network is
built with its blocks joined (snnexp.nn.fusion, snnexp.ops.normalised); TEBN and BNTT, whose output depends on the
time step, always run as layers of their own.

Names. The BN of `norm=bn` was called BatchNormThroughTime, SpikingJelly's name for BNTT (its
`layer.BatchNormThroughTime2d`: a BN per time step), the opposite of what it computes. It is now `BatchNormOverTime`
(its statistics are taken over the time steps), BNTT is `BatchNormPerTimeStep`, and the old name still imports, with
a FutureWarning (stored configs that name it are mapped by snnexp.moved)."""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from snnexp.config import require
from snnexp.errors import ConfigError
from snnexp.nn.neurons.repeated import Repeated, repeat_in_time
from snnexp.ops.step_norms import per_step_batch_norm, scaled_batch_norm, takes

__all__ = ["BatchNormOverTime", "BatchNormPerTimeStep", "NeuNorm", "NoNorm", "TemporalEffectiveBatchNorm",
           "ThresholdDependentBatchNorm"]


class BatchNormOverTime(nn.modules.batchnorm._BatchNorm):
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


class ThresholdDependentBatchNorm(BatchNormOverTime):
    """tdBN (Zheng et al. 2021): BN over (T, B, H, W) per channel, normalised to alpha * V_th.

    y = lambda * alpha * V_th * x_hat + beta is written, as in SpikingJelly, as a BN whose scale starts at
    alpha * V_th (lambda = 1): the same function, one parameter fewer."""

    def __init__(self, num_features, alpha: float = 1.0, v_threshold: float = 1.0, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.alpha, self.v_threshold = float(alpha), float(v_threshold)
        nn.init.constant_(self.weight, self.alpha * self.v_threshold)

    def extra_repr(self):
        return super().extra_repr() + f", alpha={self.alpha}, v_threshold={self.v_threshold}"


class _BuiltForSteps(nn.Module):
    """A norm that holds something per time step (`per_step`: TEBN's scales, BNTT's BNs), so it runs on the T steps it
    was built for (norm.T, which follows trainer.T) and no others."""

    per_step = ""

    def __init__(self, T: int):
        super().__init__()
        require("norm.T", T)
        self.T = int(T)

    @property
    def fixed_steps(self) -> int:
        """The steps it was built for: train/memory.py probes a network with such a layer at trainer.T only."""
        return self.T

    def check_steps(self, steps: int) -> None:
        if steps != self.T:
            raise ConfigError(f"{type(self).__name__} was built for T={self.T} time steps (norm.T, which follows "
                              f"trainer.T) but its input has {steps}: it has {self.per_step} per step, so run it with "
                              f"trainer.T={self.T}, or leave norm.T to follow trainer.T")


class TemporalEffectiveBatchNorm(_BuiltForSteps):
    """TEBN (Duan et al. 2022): the BN above, statistics over all T steps and the batch, and then the output of step t
    scaled by a learned p[t]: y[t] = p[t] (gamma x_hat[t] + beta). One BN keeps the statistics of every step alike
    (as BNTT's per-step BNs do not), while p lets each step weigh its input currents differently. p has one number per
    step (not per channel) and starts at 1, the parameterisation of the paper's code and of SpikingJelly's
    `layer.TemporalEffectiveBatchNorm2d(T, C)` (its `scale`). A BN child, not a subclass: the joined kernels and the
    NIR export, which take a BatchNormOverTime as one per-channel affine map, leave it alone.

    Computed by snnexp.ops.step_norms (one pass for the output, only the input kept for backward); on CUDA, under
    autocast and torch.compile as the BN followed by the scaling. Direct coding's Repeated input: BN runs on the one
    step (its statistics are those of T copies) and the T scaled outputs are written out, [T, B, ...]."""

    takes_repeated = True
    per_step = "one scale p[t]"

    def __init__(self, num_features: int, T: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(T)
        self.bn = BatchNormOverTime(num_features, eps=eps, momentum=momentum)
        self.scale = nn.Parameter(torch.ones(self.T))

    def forward(self, x_seq):
        self.check_steps(x_seq.T if isinstance(x_seq, Repeated) else x_seq.shape[0])
        if isinstance(x_seq, Repeated):
            y = self.bn(x_seq).step
            return y.unsqueeze(0) * self.scale.view(-1, *[1] * y.dim())
        if takes(x_seq, x_seq.numel() // x_seq.shape[2], [self.bn.weight, self.scale]):
            return scaled_batch_norm(self.bn, self.scale, x_seq)
        return self.bn(x_seq) * self.scale.view(-1, *[1] * (x_seq.dim() - 1))

    def extra_repr(self):
        return f"T={self.T}"


class BatchNormPerTimeStep(_BuiltForSteps):
    """BNTT (Kim & Panda 2021): a BN of its own for each time step, with its own statistics (taken over the batch, and
    space for conv layers, of that step alone), running statistics and scale gamma[t]; as in the paper, no shift
    (beta). What SpikingJelly calls `layer.BatchNormThroughTime2d(T, C)` and snnTorch `BatchNormTT2d(C, T)`, with their
    defaults (gamma starts at 1; eps 1e-5 and momentum 0.1 as torch's BN; the authors' code sets eps 1e-4). A step's
    BN sees B (times H W) values where one BN over time sees T times more, so its statistics are noisier, and
    gamma[t] sets how much step t's input counts.

    Computed by snnexp.ops.step_norms (each step's BN writes into one output); on CUDA, under autocast and torch.compile
    as T BNs whose outputs are stacked. Direct coding's Repeated input is written out (each step has its own gamma and
    running statistics, so the steps' outputs differ): the layer takes the T copies, as a view."""

    per_step = "one BN"

    def __init__(self, num_features: int, T: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(T)
        self.num_features = int(num_features)
        self.steps = nn.ModuleList(_StepBatchNorm(self.num_features, eps, momentum) for _ in range(self.T))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        self.check_steps(x_seq.shape[0])
        if takes(x_seq, x_seq[0].numel() // x_seq.shape[2], [bn.weight for bn in self.steps]):
            return per_step_batch_norm(list(self.steps), x_seq)
        return torch.stack([bn(x) for bn, x in zip(self.steps, x_seq.unbind(0))])

    def extra_repr(self):
        return f"{self.num_features}, T={self.T}"


class _StepBatchNorm(nn.modules.batchnorm._BatchNorm):
    """One step's BN of BNTT: torch's BN on [B, C] or [B, C, ...], with a scale and no shift (bias None, as the peers
    set it). A _BatchNorm, so the first epoch's cumulative running statistics reach it (train/epoch.py)."""

    def __init__(self, num_features: int, eps: float, momentum: float):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.bias = None

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least [B, C] input, got shape {tuple(x.shape)}")


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


def __getattr__(name: str):
    """The old name of BatchNormOverTime (module docstring), with a FutureWarning."""
    if name == "BatchNormThroughTime":
        warnings.warn("snnexp.nn.norms.BatchNormThroughTime is now BatchNormOverTime (one BN over time and batch); "
                      "BNTT, a BN per time step, is BatchNormPerTimeStep", FutureWarning, stacklevel=2)
        return BatchNormOverTime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
