"""Losses on the readout's class scores [B, K]: firing rates, or membrane potentials (membrane readouts)."""

import torch.nn.functional as F
from torch import nn


class MSERate(nn.Module):
    """MSE between the firing rates and the one-hot label (Wu 2019, PLIF, the SpikingJelly tutorial)."""

    needs = "rates"  # class scores in [0, 1] to compare with one-hot labels (snnexp.train.build.part_problems)

    def forward(self, rate, target):
        return F.mse_loss(rate, F.one_hot(target, rate.shape[-1]).to(rate.dtype))


class CERate(nn.Module):
    """Cross-entropy with the class scores as logits: the firing rates, or a membrane readout's potentials."""

    def forward(self, rate, target):
        return F.cross_entropy(rate, target)
