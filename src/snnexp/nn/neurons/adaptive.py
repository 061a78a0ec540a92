"""The adaptive LIF neuron (ALIF) as plain functions: its reference definition, one step and a whole sequence.
`snnexp.nn.neurons.ALIF` is the module that holds its parameters and calls them. Equations and the papers:
docs/science.md, section 1, "Adaptive LIF".

ALIF is our LIF (functional.py) whose threshold rises with each of its own spikes and relaxes back with a second,
slower time constant, tau_adapt. Each neuron carries two state variables, the membrane potential V and the
adaptation a (a low-pass filtered spike train, between 0 and 1). One step t, from (V[t-1], a[t-1]):

    H[t]     = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau      decay_input = True   (functional.charge)
    H[t]     = V[t-1] - (V[t-1] - V_reset) / tau + X[t]        decay_input = False
    theta[t] = V_th + beta a[t-1]                             the threshold of this step
    S[t]     = Heaviside(H[t] - theta[t])                     surrogate gradient in backward
    V[t]     = H[t] (1 - S[t]) + V_reset S[t]                 hard reset (v_reset a number)
    V[t]     = H[t] - theta[t] S[t]                           soft reset (v_reset = None): subtract what was crossed
    a[t]     = a[t-1] + (S[t] - a[t-1]) / tau_adapt           adaptation: + 1/tau_adapt per spike, then decays

At rest V = V_reset (0 for a soft reset) and a = 0, so theta = V_th. Timing: the input X[t] reaches the spike S[t]
of the same step (no delay); a spike at t raises the threshold from step t + 1 on (by beta / tau_adapt). With
beta = 0 this is exactly the LIF of functional.py. `detach_reset` takes S[t] in the reset as a constant in
backward, as for LIF; the adaptation always keeps S[t] in the gradient (the threshold's path through a is how
gradients learn tau_adapt). This module imports nothing of snnexp.nn.neurons but functional.py.
"""

from typing import Callable, Optional, Tuple, Union

import torch

from snnexp.nn.neurons.functional import charge, reset

Tensor = torch.Tensor
Rate = Union[float, Tensor]  # 1/tau: a float (fixed) or a 0-d tensor (learned)


def alif_initial_state(x: Tensor, v_reset: Optional[float]) -> Tuple[Tensor, Tensor]:
    """(V, a) at rest, shaped like one step's input x [B, ...]: V = V_reset (0 for a soft reset), a = 0."""
    return torch.full_like(x, 0.0 if v_reset is None else v_reset), torch.zeros_like(x)


def alif_step(x: Tensor, state: Tuple[Tensor, Tensor], tau_inv: Rate, tau_adapt_inv: Rate,
              surrogate: Callable[[Tensor], Tensor], v_threshold: float = 1.0, beta: float = 1.8,
              v_reset: Optional[float] = 0.0, decay_input: bool = True, detach_reset: bool = False):
    """One time step (module docstring): (S[t], (V[t], a[t])) from X[t] [B, ...] and (V[t-1], a[t-1])."""
    v, a = state
    leak_to = 0.0 if v_reset is None else v_reset
    h = charge(v, x, tau_inv, leak_to, decay_input)
    theta = v_threshold + beta * a
    s = surrogate(h - theta)
    v = reset(h, s.detach() if detach_reset else s, theta, v_reset)
    a = a + (s - a) * tau_adapt_inv
    return s, (v, a)


def alif_multistep(x_seq: Tensor, tau_inv: Rate, tau_adapt_inv: Rate, surrogate: Callable[[Tensor], Tensor],
                   v_threshold: float = 1.0, beta: float = 1.8, v_reset: Optional[float] = 0.0,
                   decay_input: bool = True, detach_reset: bool = False, return_state: bool = False):
    """Run an ALIF layer over x_seq [T, B, ...] from rest: `alif_step` at each step.

    Returns the spikes [T, B, ...], or with `return_state` (spikes, V, a), each [T, B, ...] (V and a after the
    step; the threshold of step t is V_th + beta a[t-1])."""
    state = alif_initial_state(x_seq[0], v_reset)
    spikes, vs, adaptation = [], [], []
    for x in x_seq:
        s, state = alif_step(x, state, tau_inv, tau_adapt_inv, surrogate, v_threshold, beta, v_reset,
                             decay_input, detach_reset)
        spikes.append(s)
        if return_state:
            vs.append(state[0])
            adaptation.append(state[1])
    spikes = torch.stack(spikes)
    return (spikes, torch.stack(vs), torch.stack(adaptation)) if return_state else spikes
