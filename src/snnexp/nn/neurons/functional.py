"""Multi-step neuron dynamics as plain functions: the reference definition of each neuron.

Input is time-major [T, B, ...]; every call starts from rest (V = V_reset, or 0 for a soft reset),
so nothing has to be reset between batches. Equations and the papers: docs/science.md, section 1.

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau      decay_input = True
    H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]        decay_input = False
    H[t] = V[t-1] + X[t]                                   IF (tau_inv = None)
    S[t] = Heaviside(H[t] - V_th)                          surrogate gradient in backward
    V[t] = H[t] (1 - S[t]) + V_reset S[t]                  hard reset
    V[t] = H[t] - V_th S[t]                                soft reset (v_reset = None)

`lif_multistep_reference` is the definition: autograd differentiates it op by op. The fused kernel (fused.py)
computes the same; `snnexp.nn.neurons.lif_multistep`, what the modules call, chooses between the two. This module
imports nothing of snnexp: fused.py builds on it, never the reverse.
"""

from typing import Callable, Optional, Union

import torch

Tensor = torch.Tensor


def charge(v: Tensor, x: Tensor, tau_inv, leak_to: float, decay_input: bool) -> Tensor:
    """H[t] from V[t-1] and X[t]; tau_inv = None is IF (no leak)."""
    if tau_inv is None:
        return v + x
    if decay_input:
        return v + (x - (v - leak_to)) * tau_inv
    return v - (v - leak_to) * tau_inv + x


def reset(h: Tensor, s: Tensor, v_threshold: float, v_reset: Optional[float]) -> Tensor:
    """V[t] from H[t] and the spikes: hard reset to v_reset, or soft (subtract V_th) when it is None."""
    return h - v_threshold * s if v_reset is None else h * (1.0 - s) + v_reset * s


def lif_step(x: Tensor, v: Tensor, tau_inv, surrogate: Callable[[Tensor], Tensor], v_threshold: float = 1.0,
             v_reset: Optional[float] = 0.0, decay_input: bool = True, detach_reset: bool = False):
    """One time step from V[t-1]: (S[t], V[t]) of the input X[t]: charge, fire (surrogate gradient), reset."""
    h = charge(v, x, tau_inv, 0.0 if v_reset is None else v_reset, decay_input)
    s = surrogate(h - v_threshold)
    return s, reset(h, s.detach() if detach_reset else s, v_threshold, v_reset)


def lif_multistep_reference(
    x_seq: Tensor,
    tau_inv: Union[float, Tensor, None],
    surrogate: Callable[[Tensor], Tensor],
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    return_v: bool = False,
):
    """Run a LIF layer over a whole sequence. `tau_inv` = 1/tau (a tensor for PLIF); None gives IF.

    Returns the spikes [T, B, ...], or (spikes, membrane potential after reset) if `return_v`.
    """
    v = torch.full_like(x_seq[0], 0.0 if v_reset is None else v_reset)
    spikes, v_seq = [], []
    for x in x_seq:
        s, v = lif_step(x, v, tau_inv, surrogate, v_threshold, v_reset, decay_input, detach_reset)
        spikes.append(s)
        if return_v:
            v_seq.append(v)
    spikes = torch.stack(spikes)
    return (spikes, torch.stack(v_seq)) if return_v else spikes
