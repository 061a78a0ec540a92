"""What every neuron module shares: `SpikingNeuron` (its settings, backends, the multistep call through the fused
kernel or the reference definition, the single-step interface, what it logs) and `lif_multistep`, the function it
calls. Its own module so that the neurons beside __init__.py (parallel.py) can build on it without importing the
package that exports them.
"""

from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from snnexp.config import require
from snnexp.errors import ConfigError
from snnexp.nn.neurons.functional import lif_multistep_reference, lif_step
from snnexp.nn.neurons.repeated import Repeated
from snnexp.nn.surrogate import ATan, Surrogate
from snnexp.ops.fused import (  # imported here: torch.compile finds the op
    kernel_unavailable,
    lif_multistep_fused,
    prepare_cpu_kernels,
)

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


def lif_multistep_spatial(x_seq: torch.Tensor, tau_inv, surrogate: Callable, v_threshold: float = 1.0,
                          v_reset: Optional[float] = 0.0, decay_input: bool = True, detach_reset: bool = False,
                          keep: Optional[Sequence[bool]] = None, v: Optional[torch.Tensor] = None):
    """The reference definition with the membrane V[t-1] detached at every step: the same spikes, and a gradient
    through the spatial path only (the temporal term dV[t]/dV[t-1] dropped: SLTT, snnexp.train.learning). `keep`: a
    flag per step; the spikes of a step without it are detached too, so that no gradient is taken at that step.
    `v`: the membrane to start from (None: at rest). Returns (spikes, the last V, detached)."""
    v = torch.full_like(x_seq[0], 0.0 if v_reset is None else v_reset) if v is None else v
    spikes = []
    for t, x in enumerate(x_seq):
        s, v = lif_step(x, v.detach(), tau_inv, surrogate, v_threshold, v_reset, decay_input, detach_reset)
        spikes.append(s if keep is None or keep[t] else s.detach())
    return torch.stack(spikes), v.detach()


class SpikingNeuron(nn.Module):
    """Common parameters. A call processes a whole [T, B, ...] sequence from rest; `initial_state` and `step`
    run it one time step at a time (for recurrent layers).

    backend: "fused" runs the fused kernel (snnexp/ops/fused.py), "reference" the step-by-step definition
    that autograd differentiates op by op; both give the same spikes and gradients."""

    decay_input = True  # IF: no leak, so no input decay either (LIF and PLIF set their own)
    backends = BACKENDS  # the ways it can run (ALIF: the reference only)
    takes_repeated = True  # direct coding's Repeated input gives the spikes of all steps (snnexp.nn.neurons.repeated)
    # Set by a learning rule (snnexp.train.learning, learning=sltt), not by the config: detach_membrane runs the
    # step-by-step definition with V[t-1] detached (lif_multistep_spatial); gradient_steps, with it, the steps whose
    # gradient is kept (a flag per step; None: all); carry_membrane, with it, makes a call go on from the membrane
    # the previous call left (carried_v; None: at rest), for a network run one step per call (learning=ottt)
    detach_membrane = False
    gradient_steps: Optional[Sequence[bool]] = None
    carry_membrane = False
    carried_v: Optional[torch.Tensor] = None

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
        if self.detach_membrane:
            x_seq = x_seq.expand() if isinstance(x_seq, Repeated) else x_seq
            spikes, v = lif_multistep_spatial(x_seq, *self.dynamics(), keep=self.gradient_steps,
                                              v=self.carried_v if self.carry_membrane else None)
            self.carried_v = v if self.carry_membrane else None
            return spikes
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
