"""Spiking neurons: `lif_multistep` / `if_multistep`, which run a layer over a whole sequence through the fused
kernel or the reference definition, and the modules (IF, LIF, PLIF, STBPLIF, ALIF; the parallel neurons PSN,
MaskedPSN and SlidingPSN of parallel.py), thin wrappers that hold parameters and call them. Equations:
docs/science.md, section 1.

Dependencies point one way: functional.py (the definitions) <- fused.py (the op and its kernels) <- base.py
(SpikingNeuron, lif_multistep) <- this module; functional.py <- adaptive.py (the adaptive LIF's definition) <- this
module; base.py <- parallel.py (the parallel neurons) <- this module.
"""

import math
from typing import Dict, Optional, Union

import torch
from torch import nn

from snnexp.config import require
from snnexp.nn.neurons.adaptive import alif_initial_state, alif_multistep, alif_step
from snnexp.nn.neurons.base import BACKENDS, SpikingNeuron, check_backend, lif_multistep
from snnexp.nn.neurons.functional import lif_multistep_reference
from snnexp.nn.neurons.parallel import PSN, MaskedPSN, ParallelNeuron, SlidingPSN
from snnexp.nn.neurons.repeated import Repeated
from snnexp.nn.surrogate import Surrogate
from snnexp.ops.fused import lif_multistep_fused  # re-exported: where it was

__all__ = ["IF", "LIF", "PLIF", "STBPLIF", "SpikingNeuron", "if_multistep", "lif_multistep", "lif_multistep_fused",
           "lif_multistep_reference", "ALIF", "PSN", "MaskedPSN", "SlidingPSN", "ParallelNeuron", "BACKENDS",
           "check_backend"]


def if_multistep(x_seq: torch.Tensor, surrogate, v_threshold=1.0, v_reset=0.0, detach_reset=False, return_v=False,
                 backend: str = "fused"):
    """Integrate-and-fire: no leak."""
    return lif_multistep(x_seq, None, surrogate, v_threshold, v_reset, True, detach_reset, return_v, backend)


class IF(SpikingNeuron):
    def tau_inv(self):
        return None  # no leak


class LIF(SpikingNeuron):
    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def tau_inv(self):
        return 1.0 / self.tau

    def extra_repr(self):
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


def _tau_parameter(tau: float) -> nn.Parameter:
    """w with sigmoid(w) = 1/tau, i.e. w = -ln(tau - 1) (PLIF's parametrisation: tau stays in (1, inf))."""
    return nn.Parameter(torch.tensor(-math.log(tau - 1.0)))


class PLIF(SpikingNeuron):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w), one learnable w per layer, tau starts at tau0."""

    def __init__(self, tau0: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.decay_input = bool(decay_input)
        self.w = _tau_parameter(float(tau0))

    @property
    def tau(self) -> float:
        return 1.0 / torch.sigmoid(self.w.detach()).item()

    def tau_inv(self):
        return torch.sigmoid(self.w)

    def extra_repr(self):
        return f"tau={self.tau:.4f}, decay_input={self.decay_input}, " + super().extra_repr()


class STBPLIF(LIF):
    """STBP's explicit iterative LIF (Wu et al. 2019): u[t] = k u[t-1] (1 - o[t-1]) + I[t], o[t] = H(u[t] - V_th).

    This is exactly the LIF above with decay_input = False, V_reset = 0, the reset kept in the gradient
    (STBP differentiates through (1 - o)) and tau = 1 / (1 - k): then H[t] = (1 - 1/tau) V[t-1] + X[t]
    = k u[t-1] (1 - o[t-1]) + I[t]. tests/test_neurons_stbp.py checks spikes and gradients against
    the explicit formula."""

    def __init__(self, k: float = 0.2, v_threshold: float = 0.5, surrogate: Optional[Surrogate] = None,
                 backend: str = "fused"):
        require("neuron.k", k)
        super().__init__(tau=1.0 / (1.0 - k), decay_input=False, v_threshold=v_threshold, v_reset=0.0,
                         detach_reset=False, surrogate=surrogate, backend=backend)
        self.k = float(k)

    def extra_repr(self):
        return f"k={self.k}, v_threshold={self.v_threshold}"


class ALIF(SpikingNeuron):
    """Adaptive LIF (Bellec et al. 2018; Yin et al. 2021): our LIF with a threshold V_th + beta a that rises by
    beta / tau_adapt with each spike and relaxes back with time constant tau_adapt. The equations, the timing and
    the papers' constants in ours: snnexp/nn/neurons/adaptive.py and docs/science.md, section 1, "Adaptive LIF".

    tau and tau_adapt are learned as PLIF learns tau, each through one scalar per layer: 1/tau = sigmoid(w),
    1/tau_adapt = sigmoid(w_adapt), starting at the given values (learn_tau / learn_tau_adapt: false keeps them
    fixed). The state is a tuple (V, a); `forward` runs `step` over the sequence (backend "reference" only: there
    is no fused kernel for ALIF)."""

    backends = ("reference",)

    def __init__(self, tau: float = 20.0, tau_adapt: float = 200.0, beta: float = 1.8, learn_tau: bool = True,
                 learn_tau_adapt: bool = True, decay_input: bool = True, backend: str = "reference", **kwargs):
        for key, value in (("neuron.tau", tau), ("neuron.tau_adapt", tau_adapt), ("neuron.beta", beta)):
            require(key, value)
        super().__init__(backend=backend, **kwargs)
        self.decay_input, self.beta = bool(decay_input), float(beta)
        self.w = _tau_parameter(float(tau)) if learn_tau else None
        self.w_adapt = _tau_parameter(float(tau_adapt)) if learn_tau_adapt else None
        self._tau, self._tau_adapt = float(tau), float(tau_adapt)

    def tau_inv(self):
        return torch.sigmoid(self.w) if self.w is not None else 1.0 / self._tau

    def tau_adapt_inv(self):
        return torch.sigmoid(self.w_adapt) if self.w_adapt is not None else 1.0 / self._tau_adapt

    @property
    def tau(self) -> float:
        return 1.0 / torch.sigmoid(self.w.detach()).item() if self.w is not None else self._tau

    @property
    def tau_adapt(self) -> float:
        return 1.0 / torch.sigmoid(self.w_adapt.detach()).item() if self.w_adapt is not None else self._tau_adapt

    def initial_state(self, x):
        """(V, a) at rest for one step's input x [B, ...]."""
        return alif_initial_state(x, self.v_reset)

    def step(self, x, state):
        """One time step: (S[t], (V[t], a[t])) from X[t] [B, ...] and (V[t-1], a[t-1])."""
        return alif_step(x, state, self.tau_inv(), self.tau_adapt_inv(), self.surrogate, self.v_threshold,
                         self.beta, self.v_reset, self.decay_input, self.detach_reset)

    def forward(self, x_seq: Union[torch.Tensor, Repeated]) -> torch.Tensor:
        """Spikes [T, B, ...] of x_seq [T, B, ...] (or a Repeated's T steps, as a view: no copy) from rest."""
        x_seq = x_seq.expand() if isinstance(x_seq, Repeated) else x_seq
        return alif_multistep(x_seq, self.tau_inv(), self.tau_adapt_inv(), self.surrogate, self.v_threshold,
                              self.beta, self.v_reset, self.decay_input, self.detach_reset)

    def scalars(self) -> Dict[str, float]:
        """Both time constants, learned or fixed (a flat line), as every neuron logs its tau."""
        return {"tau": self.tau, "tau_adapt": self.tau_adapt}

    def extra_repr(self):
        return (f"tau={self.tau:.4f} ({'learned' if self.w is not None else 'fixed'}), tau_adapt={self.tau_adapt:.4f} "
                f"({'learned' if self.w_adapt is not None else 'fixed'}), beta={self.beta}, "
                f"decay_input={self.decay_input}, " + super().extra_repr())
