"""Spiking neurons: `lif_multistep` / `if_multistep`, which run a layer over a whole sequence through the fused
kernel or the reference definition, and the modules (IF, LIF, PLIF, STBPLIF, ALIF), thin wrappers that hold
parameters and call them. Equations: docs/science.md, section 1.

Dependencies point one way: functional.py (the definitions) <- fused.py (the op and its kernels) <- this module;
functional.py <- adaptive.py (the adaptive LIF's definition) <- this module.
"""

import math
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from snnexp.config import require
from snnexp.errors import ConfigError
from snnexp.nn.neurons.adaptive import alif_initial_state, alif_multistep, alif_step
from snnexp.nn.neurons.functional import lif_multistep_reference, lif_step
from snnexp.nn.neurons.repeated import Repeated
from snnexp.nn.surrogate import ATan, Surrogate
from snnexp.ops.fused import (  # imported here: torch.compile finds the op
    kernel_unavailable,
    lif_multistep_fused,
    prepare_cpu_kernels,
)

__all__ = ["IF", "LIF", "PLIF", "STBPLIF", "SpikingNeuron", "if_multistep", "lif_multistep", "lif_multistep_fused",
           "lif_multistep_reference", "ALIF"]

BACKENDS = ("fused", "reference")


def check_backend(backend: str) -> None:
    require("neuron.backend", backend)


def lif_multistep(x_seq: torch.Tensor, tau_inv: Union[float, torch.Tensor, None], surrogate: Callable,
                  v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, decay_input: bool = True,
                  detach_reset: bool = False, return_v: bool = False, backend: str = "fused", steps: int = 0):
    """`lif_multistep_reference`, through the fused kernel when it can: backend "fused" (the default) with a
    surrogate the kernels know, no `return_v`, and a kernel for x's device (without one: the definition, after one
    warning that says why); "reference" always runs the definition. With `steps`, x_seq
    is one step's input [B, ...], the same at each of `steps` steps (direct coding; see lif_multistep_fused)."""
    check_backend(backend)
    if backend == "fused" and not return_v and getattr(surrogate, "kernel_args", lambda: None)() is not None \
            and kernel_unavailable(x_seq.device.type) is None:
        return lif_multistep_fused(x_seq, tau_inv, surrogate, v_threshold, v_reset, decay_input, detach_reset,
                                   steps)
    x_seq = x_seq.unsqueeze(0).expand(steps, *x_seq.shape) if steps else x_seq
    return lif_multistep_reference(x_seq, tau_inv, surrogate, v_threshold, v_reset, decay_input, detach_reset,
                                   return_v)


def if_multistep(x_seq: torch.Tensor, surrogate, v_threshold=1.0, v_reset=0.0, detach_reset=False, return_v=False,
                 backend: str = "fused"):
    """Integrate-and-fire: no leak."""
    return lif_multistep(x_seq, None, surrogate, v_threshold, v_reset, True, detach_reset, return_v, backend)


class SpikingNeuron(nn.Module):
    """Common parameters. A call processes a whole [T, B, ...] sequence from rest; `initial_state` and `step`
    run it one time step at a time (for recurrent layers).

    backend: "fused" runs the fused kernel (snnexp/ops/fused.py), "reference" the step-by-step definition
    that autograd differentiates op by op; both give the same spikes and gradients."""

    decay_input = True  # IF: no leak, so no input decay either (LIF and PLIF set their own)
    backends = BACKENDS  # the ways it can run (ALIF: the reference only)
    takes_repeated = True  # direct coding's Repeated input gives the spikes of all steps (snnexp.nn.neurons.repeated)

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate: Optional[Surrogate] = None,
        backend: str = "fused",
    ):
        super().__init__()
        check_backend(backend)
        problem = self.unsupported_backend(backend)
        if problem:
            raise ConfigError(problem)
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.backend = backend
        if backend == "fused":
            prepare_cpu_kernels()

    @classmethod
    def unsupported_backend(cls, backend: str) -> Optional[str]:
        """Why this neuron cannot run on `backend` (one of BACKENDS), or None."""
        if backend in cls.backends:
            return None
        return (f"neuron.backend={backend}: {cls.__name__} has no {backend} kernel, only the step-by-step definition: "
                f"set neuron.backend={cls.backends[0]}")

    def tau_inv(self):
        """1/tau as the neuron functions take it: a float, a tensor (learned), or None for IF."""
        raise NotImplementedError

    def dynamics(self) -> tuple:
        """(1/tau, surrogate, V_th, V_reset, decay_input, detach_reset): the layer's settings in the order every
        neuron function takes them (functional.py, fused.py; the joined ops of pooled.py and layers.py)."""
        return self.tau_inv(), self.surrogate, self.v_threshold, self.v_reset, self.decay_input, self.detach_reset

    def forward(self, x_seq: Union[torch.Tensor, Repeated]) -> torch.Tensor:
        """Spikes [T, B, ...] of x_seq [T, B, ...], or of a Repeated's step fed at each of its T steps (direct
        coding: the fused kernel reads it in place and sums its gradient over the steps)."""
        if isinstance(x_seq, Repeated):
            return lif_multistep(x_seq.step, *self.dynamics(), backend=self.backend, steps=x_seq.T)
        return lif_multistep(x_seq, *self.dynamics(), backend=self.backend)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """The state at rest for one step's input x [B, ...]: the membrane potential V = V_reset (0 for a soft
        reset), shaped like x. Subclasses with more state (ALIF) return their own (a tuple)."""
        return torch.full_like(x, 0.0 if self.v_reset is None else self.v_reset)

    def step(self, x: torch.Tensor, v: torch.Tensor):
        """One time step: (spikes S[t], V[t]) from the input X[t] [B, ...] and V[t-1], by the same charge, fire
        and reset as the multistep `forward` (functional.py), so that looping it over T gives forward's spikes and
        gradients. For a layer whose input at t depends on its own spikes at t-1 (snnexp.nn.recurrent)."""
        return lif_step(x, v, *self.dynamics())

    def scalars(self) -> Dict[str, float]:
        """What this layer logs to TensorBoard beside its firing rate, by name: its time constant, learned (PLIF) or
        fixed (LIF: a flat line), so that runs that differ only in the neuron share the chart; IF has none."""
        tau = getattr(self, "tau", None)
        return {} if tau is None else {"tau": float(tau)}

    def extra_repr(self):
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
                f"backend={self.backend}")


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
