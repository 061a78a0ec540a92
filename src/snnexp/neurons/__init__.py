"""Spiking neurons: `lif_multistep` / `if_multistep`, which run a layer over a whole sequence through the fused
kernel or the reference definition, and the modules (IF, LIF, PLIF, STBPLIF), thin wrappers that hold parameters
and call them. Equations: docs/science.md, section 1.

Dependencies point one way: functional.py (the definitions) <- fused.py (the op and its kernels) <- this module.
"""

import math
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from snnexp.neurons.functional import charge, lif_multistep_reference, reset
from snnexp.neurons.fused import lif_multistep_fused  # imported with the modules, so torch.compile finds the op
from snnexp.surrogate import ATan, Surrogate

__all__ = ["IF", "LIF", "PLIF", "STBPLIF", "SpikingNeuron", "if_multistep", "lif_multistep", "lif_multistep_fused",
           "lif_multistep_reference"]

BACKENDS = ("fused", "reference")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"neuron backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def lif_multistep(x_seq: torch.Tensor, tau_inv: Union[float, torch.Tensor, None], surrogate: Callable,
                  v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, decay_input: bool = True,
                  detach_reset: bool = False, return_v: bool = False, backend: str = "fused", steps: int = 0):
    """`lif_multistep_reference`, through the fused kernel when it can: backend "fused" (the default) with a
    surrogate the kernels know and no `return_v`; "reference" always runs the definition. With `steps`, x_seq
    is one step's input [B, ...], the same at each of `steps` steps (direct coding; see lif_multistep_fused)."""
    check_backend(backend)
    if backend == "fused" and not return_v and getattr(surrogate, "kernel_args", lambda: None)() is not None:
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

    backend: "fused" runs the fused kernel (snnexp/neurons/fused.py), "reference" the step-by-step definition
    that autograd differentiates op by op; both give the same spikes and gradients."""

    decay_input = True  # IF: no leak, so no input decay either (LIF and PLIF set their own)
    repeated_input = "sequence"  # one step's input gives the spikes of all steps: see snnexp.layers.run_layers

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
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.backend = backend

    def tau_inv(self):
        """1/tau as the neuron functions take it: a float, a tensor (learned), or None for IF."""
        raise NotImplementedError

    def forward(self, x_seq, steps: int = 0):
        """Spikes [T, B, ...] of x_seq [T, B, ...]; with `steps`, of x_seq [B, ...] fed at each of `steps` steps
        (direct coding: the fused kernel reads it in place and sums its gradient over the steps)."""
        return lif_multistep(x_seq, self.tau_inv(), self.surrogate, self.v_threshold, self.v_reset,
                             self.decay_input, self.detach_reset, backend=self.backend, steps=steps)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """The state at rest for one step's input x [B, ...]: the membrane potential V = V_reset (0 for a soft
        reset), shaped like x. Subclasses with more state (ALIF) return their own (a tuple)."""
        return torch.full_like(x, 0.0 if self.v_reset is None else self.v_reset)

    def step(self, x: torch.Tensor, v: torch.Tensor):
        """One time step: (spikes S[t], V[t]) from the input X[t] [B, ...] and V[t-1], by the same charge, fire
        and reset as the multistep `forward` (functional.py), so that looping it over T gives forward's spikes and
        gradients. For a layer whose input at t depends on its own spikes at t-1 (snnexp.recurrent)."""
        leak_to = 0.0 if self.v_reset is None else self.v_reset
        h = charge(v, x, self.tau_inv(), leak_to, self.decay_input)
        s = self.surrogate(h - self.v_threshold)
        return s, reset(h, s.detach() if self.detach_reset else s, self.v_threshold, self.v_reset)

    def scalars(self) -> Dict[str, float]:
        """What this layer logs to TensorBoard beside its firing rate, by name (PLIF: its learned tau)."""
        return {}

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


class PLIF(SpikingNeuron):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w), one learnable w per layer, tau starts at tau0."""

    def __init__(self, tau0: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(float(tau0) - 1.0)))

    @property
    def tau(self) -> float:
        return 1.0 / torch.sigmoid(self.w.detach()).item()

    def scalars(self) -> Dict[str, float]:
        return {"tau": self.tau}

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
        if not 0 < k < 1:
            raise ValueError(f"STBP decay factor k must be in (0, 1), got {k}")
        super().__init__(tau=1.0 / (1.0 - k), decay_input=False, v_threshold=v_threshold, v_reset=0.0,
                         detach_reset=False, surrogate=surrogate, backend=backend)
        self.k = float(k)

    def extra_repr(self):
        return f"k={self.k}, v_threshold={self.v_threshold}"
