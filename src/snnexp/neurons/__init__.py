"""Spiking neuron modules: thin wrappers holding parameters around the functions in `functional`."""

import math
from typing import Optional

import torch
from torch import nn

from snnexp.neurons.functional import if_multistep, lif_multistep
from snnexp.surrogate import ATan, Surrogate

__all__ = ["IF", "LIF", "PLIF", "SpikingNeuron", "if_multistep", "lif_multistep"]


class SpikingNeuron(nn.Module):
    """Common parameters. A call processes a whole [T, B, ...] sequence from rest."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate: Optional[Surrogate] = None,
    ):
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate if surrogate is not None else ATan()

    def extra_repr(self):
        return f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}"


class IF(SpikingNeuron):
    def forward(self, x_seq):
        return if_multistep(x_seq, self.surrogate, self.v_threshold, self.v_reset, self.detach_reset)


class LIF(SpikingNeuron):
    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def forward(self, x_seq):
        return lif_multistep(
            x_seq, 1.0 / self.tau, self.surrogate, self.v_threshold, self.v_reset, self.decay_input, self.detach_reset
        )

    def extra_repr(self):
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class PLIF(SpikingNeuron):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w), one learnable w per layer, tau starts at tau0."""

    def __init__(self, tau0: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(float(tau0) - 1.0)))

    @property
    def tau(self) -> float:
        return 1.0 / torch.sigmoid(self.w.detach()).item()

    def forward(self, x_seq):
        tau_inv = torch.sigmoid(self.w)
        return lif_multistep(
            x_seq, tau_inv, self.surrogate, self.v_threshold, self.v_reset, self.decay_input, self.detach_reset
        )

    def extra_repr(self):
        return f"tau={self.tau:.4f}, decay_input={self.decay_input}, " + super().extra_repr()
