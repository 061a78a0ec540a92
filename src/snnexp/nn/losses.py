"""Losses on the readout's class scores [B, K] (firing rates, or membrane potentials of a membrane readout), or, for
a loss that declares `per_step`, on every time step's scores [T, B, K] (the readout's `per_step`)."""

import torch
import torch.nn.functional as F
from torch import nn

from snnexp.config import require


class MSERate(nn.Module):
    """MSE between the firing rates and the one-hot label (Wu 2019, PLIF, the SpikingJelly tutorial)."""

    needs = "rates"  # class scores in [0, 1] to compare with one-hot labels (snnexp.train.build.part_problems)

    def forward(self, rate, target):
        return F.mse_loss(rate, F.one_hot(target, rate.shape[-1]).to(rate.dtype))


class CERate(nn.Module):
    """Cross-entropy with the class scores as logits: the firing rates, or a membrane readout's potentials.

    `label_smoothing` eps (torch's): the target is (1 - eps) the label + eps spread evenly over the K classes, so the
    loss is (1 - eps) CE(scores, y) + eps * 1/K sum_k -log p_k (the transformers' code: 0.1)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        require("loss.label_smoothing", label_smoothing)
        self.label_smoothing = float(label_smoothing)

    def forward(self, rate, target):
        return F.cross_entropy(rate, target, label_smoothing=self.label_smoothing)

    def extra_repr(self):
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""


class TET(nn.Module):
    """Temporal efficient training (Deng et al., ICLR 2022): the cross-entropy of every time step's scores O[t]
    against the label, averaged over the T steps, instead of the cross-entropy of their mean; and a small MSE
    pulling every O[t] towards a constant phi, which keeps the outputs from drifting to large values:

        L = (1 - lam) * 1/T sum_t CE(O[t], y)  +  lam * 1/T sum_t MSE(O[t], phi)

    lam = 1e-3 and phi = 1 are the defaults of the authors' code. `label_smoothing` eps smooths each step's
    cross-entropy as CERate's does (the Spike-driven Transformer's TET on CIFAR10-DVS: 0.1). [T, B, K] scores
    (readout.per_step) -> a scalar. docs/science.md, section 4."""

    per_step = True  # takes every step's scores, not their reduction over time (train/epoch.py scores_and_loss)

    def __init__(self, lam: float = 1e-3, phi: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        require("loss.lam", lam)
        self.lam, self.phi = float(lam), float(phi)
        require("loss.label_smoothing", label_smoothing)
        self.label_smoothing = float(label_smoothing)

    def forward(self, scores_seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = self.mean_step_cross_entropy(scores_seq, target, self.label_smoothing)
        if self.lam == 0:
            return ce
        phi = scores_seq.new_tensor(self.phi).expand_as(scores_seq)  # a view: no [T, B, K] tensor of phi's
        return (1 - self.lam) * ce + self.lam * F.mse_loss(scores_seq, phi)

    @staticmethod
    def mean_step_cross_entropy(scores_seq: torch.Tensor, target: torch.Tensor,
                                label_smoothing: float = 0.0) -> torch.Tensor:
        """1/T sum_t CE(O[t], y), each smoothed by `label_smoothing`: one cross-entropy over the T x B rows, whose
        mean is the mean over t of each step's. Few classes (under 16) go to torch as [B, K, T], the softmax across
        strided classes with the T steps side by side, as SpikingJelly lays them out; more as [T B, K] rows. Each
        layout is the faster one there, forward + backward on this CPU (bench/bench_tet.py): [10, 128, 10] 0.14 ms
        against 0.23 ms, [10, 128, 1000] 1.3 ms against 6.5 ms."""
        T, _, K = scores_seq.shape
        if K < 16:
            return F.cross_entropy(scores_seq.permute(1, 2, 0), target[:, None].expand(-1, T),
                                   label_smoothing=label_smoothing)
        return F.cross_entropy(scores_seq.flatten(0, 1), target.repeat(T), label_smoothing=label_smoothing)

    def extra_repr(self):
        smoothing = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"lam={self.lam}, phi={self.phi}{smoothing}"
