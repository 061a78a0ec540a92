"""Input encoders: a static batch [B, ...] with values in [0, 1] -> a time-major sequence [T, B, ...]."""

from typing import Optional

import torch


class DirectEncoder:
    """Direct coding (Wu 2019, PLIF): the real-valued input is fed at every step; the first
    conv/FC + norm + neuron layer of the network acts as the encoder."""

    passes_frames = True  # a dataset of event frames is fed as it is: the one encoder that goes with it

    def __call__(self, x, T: int, generator: Optional[torch.Generator] = None):
        return x.unsqueeze(0).expand(T, *x.shape)


class PoissonEncoder:
    """Rate (Bernoulli) coding: at each step a pixel of intensity p spikes with probability p."""

    def __call__(self, x, T: int, generator: Optional[torch.Generator] = None):
        u = torch.rand((T, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (u < x).to(x.dtype)


class LatencyEncoder:
    """Time-to-first-spike: one spike per pixel at step round((1 - p) (T - 1)), so brighter pixels
    spike earlier. Pixels with p < threshold stay silent (a black background carries no information)."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = float(threshold)

    def __call__(self, x, T: int, generator: Optional[torch.Generator] = None):
        x = x.clamp(0, 1)
        t_spike = torch.round((1 - x) * (T - 1)).long()
        steps = torch.arange(T, device=x.device).view(T, *([1] * x.dim()))
        spikes = (steps == t_spike.unsqueeze(0)) & (x >= self.threshold).unsqueeze(0)
        return spikes.to(x.dtype)
