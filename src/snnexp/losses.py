"""Losses on the readout's class scores [B, K] (firing rates)."""

import torch.nn.functional as F
from torch import nn


class MSERate(nn.Module):
    """MSE between the firing rates and the one-hot label (Wu 2019, PLIF, the SpikingJelly tutorial)."""

    def forward(self, rate, target):
        return F.mse_loss(rate, F.one_hot(target, rate.shape[-1]).to(rate.dtype))


class CERate(nn.Module):
    """Cross-entropy with the firing rates as logits."""

    def forward(self, rate, target):
        return F.cross_entropy(rate, target)
