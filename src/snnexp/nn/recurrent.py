"""A recurrent spiking layer: `RecurrentFC`, the spec token RFCn (docs/science.md, "Recurrent layers").

n neurons of the configured neuron type, fed by the layer's input through W_in, normalised by the configured norm
(BN on input currents, as in an FCn-BN-SN block; norm=none leaves it out), and by their own spikes of the step
before through W_rec:

    I[t] = BN(W_in x)[t] + W_rec s[t-1],     s[-1] = 0
    s[t], state[t] = neuron.step(I[t], state[t-1]),     state[-1] = neuron.initial_state(...)  (at rest)

Input [T, B, F] -> spikes [T, B, n]. W_in x does not depend on the spikes, so it is computed (and normalised) for
all T steps at once (time folded into the batch, SeqToANN), and only W_rec s[t-1] and the neuron run step by step.

Why the norm: with PyTorch's default weights (below) the input currents of a wide, sparse input such as SHD's 700
channels are about 0.1 to 0.2, far below a threshold of 1, and a layer that never fires gets no gradient through
its surrogate; BN over time (norm=bn) scales them to unit variance per neuron from the first step, as it does for the
papers' convolutional networks. The recurrent term is left unnormalised (it is zero until the layer fires).

Why the fused multistep kernel (snnexp/ops/fused.py) cannot run this layer: the kernel takes the whole input
sequence X[0..T-1] up front and runs the neuron's T steps in one call. Here the input of step t contains
W_rec s[t-1], which exists only once step t-1 has fired, so the sequence is not known before the neuron runs;
the neuron is stepped through its single-step interface (`SpikingNeuron.step`, the same charge / fire / reset as
the kernel's reference definition) inside the time loop instead, and autograd records each step. The fused
kernel is used for the feed-forward neurons of the same network (the SN layers), not for this one; no part of
this layer runs fused.

Initialisation. W_in is PyTorch's default for nn.Linear (uniform in +-1/sqrt(F), Kaiming-uniform with a = sqrt(5)),
as for FCn. W_rec is nn.Linear(n, n, bias=False) with the same default (uniform in +-1/sqrt(n)). That is what
the peers do: snnTorch's RLeaky builds its all-to-all recurrence as a default nn.Linear(n, n) (with a bias), and
SpikingJelly's LinearRecurrentContainer a default nn.Linear over the concatenated [x, y[t-1]]. W_rec has no bias
here: W_in's bias (model.bias) already adds a constant current.

Counting. W_in and W_rec are ordinary nn.Linear modules called once per use, so the activity counters
(snnexp.report.activity) and NeuroBench's hooks see every call: W_in once on [T*B, F] (or once for the T steps of a
repeated input, counted T times), W_rec once per step t >= 1 on s[t-1] (at t = 0, s[-1] = 0 and nothing is
computed, so nothing is counted: each spike of s[t-1], t = 1..T-1, drives the non-zero weights of its column of
W_rec). The layer itself is the spiking layer whose output spikes are counted (spiking_layers), since its neuron
is stepped and never called as a module.
"""

from typing import Dict, Optional

import torch
from torch import nn

from snnexp.nn.layers import Repeated, SeqToANN, feed
from snnexp.nn.neurons import SpikingNeuron
from snnexp.nn.norms import NoNorm


class RecurrentFC(nn.Module):
    """n = out_features spiking neurons with all-to-all recurrence (module docstring). `neuron`: the neuron module
    (any SpikingNeuron, or one with the same initial_state / step interface); `bias`: W_in's bias."""

    takes_repeated = True  # direct coding's Repeated input [B, F] gives the whole spike sequence (W_in x once)

    def __init__(self, in_features: int, out_features: int, neuron: SpikingNeuron, norm: Optional[nn.Module] = None,
                 bias: bool = False):
        super().__init__()
        self.input = SeqToANN(nn.Linear(in_features, out_features, bias=bias))
        self.norm = norm if norm is not None else NoNorm()
        self.recurrent = nn.Linear(out_features, out_features, bias=False)
        self.neuron = neuron

    def forward(self, x_seq) -> torch.Tensor:
        """Spikes [T, B, n] of x_seq [T, B, F], or of a Repeated's step [B, F] fed at each of its T steps (W_in x,
        and a norm that takes it, then run once)."""
        currents = feed(self.norm, self.input(x_seq))
        currents = currents.expand() if isinstance(currents, Repeated) else currents
        state = self.neuron.initial_state(currents[0])
        spikes = []
        for t in range(currents.shape[0]):
            current = currents[t] if t == 0 else currents[t] + self.recurrent(spikes[-1])
            s, state = self.neuron.step(current, state)
            spikes.append(s)
        return torch.stack(spikes)

    def scalars(self) -> Dict[str, float]:
        """What the neuron logs of itself (PLIF's tau), reported under this layer's name."""
        return self.neuron.scalars()

    def extra_repr(self) -> str:
        return f"in_features={self.input.module.in_features}, out_features={self.recurrent.out_features}"
