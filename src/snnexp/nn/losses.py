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
    """Cross-entropy with the class scores as logits: the firing rates, or a membrane readout's potentials."""

    def forward(self, rate, target):
        return F.cross_entropy(rate, target)


class TET(nn.Module):
    """Temporal efficient training (Deng et al., ICLR 2022): the cross-entropy of every time step's scores O[t]
    against the label, averaged over the T steps, instead of the cross-entropy of their mean; and a small MSE
    pulling every O[t] towards a constant phi, which keeps the outputs from drifting to large values:

        L = (1 - lam) * 1/T sum_t CE(O[t], y)  +  lam * 1/T sum_t MSE(O[t], phi)

    lam = 1e-3 and phi = 1 are the defaults of the authors' code. [T, B, K] scores (readout.per_step) -> a scalar.
    docs/science.md, section 4."""

    per_step = True  # takes every step's scores, not their reduction over time (train/epoch.py scores_and_loss)

    def __init__(self, lam: float = 1e-3, phi: float = 1.0):
        super().__init__()
        require("loss.lam", lam)
        self.lam, self.phi = float(lam), float(phi)

    def forward(self, scores_seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        T = scores_seq.shape[0]
        ce = F.cross_entropy(scores_seq.flatten(0, 1), target.repeat(T))  # the mean over T x B = mean over t of CE_t
        if self.lam == 0:
            return ce
        return (1 - self.lam) * ce + self.lam * F.mse_loss(scores_seq, torch.full_like(scores_seq, self.phi))

    def extra_repr(self):
        return f"lam={self.lam}, phi={self.phi}"
