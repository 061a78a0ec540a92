"""The readout config group: from the output layer's spikes (or potentials) [T, B, ...] to class scores [B, K]:
rates, a voting population per class, or the membrane potential of non-spiking output neurons. `per_step` gives
the scores of every time step [T, B, K] instead, for a loss that takes each step (TET: nn/losses.py); `forward`
reduces them over time."""

import torch
from torch import nn

from snnexp.config import require
from snnexp.nn.neurons.functional import charge

__all__ = ["LeakyIntegrator", "MembraneReadout", "RateReadout", "VotingReadout"]


class RateReadout(nn.Module):
    """[T, B, K] output spikes -> [B, K] firing rates (mean over time)."""

    scores = "rates"  # what its class scores are (a loss may need rates: snnexp.train.build.part_problems)

    population = 1

    def per_step(self, spikes):
        """[T, B, K]: each step's spikes (their mean over time is the rate)."""
        return spikes

    def forward(self, spikes):
        return spikes.mean(0)


class VotingReadout(RateReadout):
    """Voting layer (Wu 2019, PLIF): `population` output neurons per class; the class score is the mean
    firing rate of its population. [T, B, K * population] -> [B, K]."""

    def __init__(self, population: int = 10):
        super().__init__()
        require("readout.population", population)
        self.population = int(population)

    def per_step(self, spikes):
        """[T, B, K]: each step's share of spiking neurons in each class's population."""
        return spikes.unflatten(-1, (-1, self.population)).mean(-1)

    def forward(self, spikes):
        return self.per_step(spikes).mean(0)

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
        require("readout.tau", tau)
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
    scores = "potentials"

    def __init__(self, reduce: str = "max", tau: float = 2.0):
        super().__init__()
        require("readout.reduce", reduce)
        LeakyIntegrator(tau)  # checks tau
        self.reduce, self.tau = reduce, float(tau)

    def output_layer(self) -> LeakyIntegrator:
        return LeakyIntegrator(self.tau)

    def per_step(self, v_seq):
        """[T, B, K]: the potential at every step."""
        return v_seq

    def forward(self, v_seq):
        if self.reduce == "max":
            return v_seq.amax(0)
        return v_seq.mean(0) if self.reduce == "mean" else v_seq[-1]

    def extra_repr(self):
        return f"reduce={self.reduce}, tau={self.tau}"
