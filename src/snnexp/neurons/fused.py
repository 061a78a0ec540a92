"""Fused multi-step LIF / IF: one loop over time forward, one loop backward with the gradient written out,
instead of autograd recording every elementwise op of every step.

The maths is that of `functional.lif_multistep` (the reference definition; tests compare the two, gradcheck
included). What it saves for backward is only the pre-spike potential H[t] and the spikes as bool (exact);
V[t-1] is recomputed from them, and dH/d(1/tau) from H[t] - V[t-1]. Backward, with g_S[t] the gradient
arriving at the spikes and g_V[t] the one carried back from step t+1:

    sg        = surrogate'(H[t] - V_th)
    dV/dH     = 1 - S[t] + (V_reset - H[t]) sg   hard reset (the sg term only without detach_reset)
              = 1 - V_th sg                        soft reset (likewise)
    g_H       = g_S[t] sg + g_V[t] dV/dH
    g_X[t]    = g_H / tau (decay_input) or g_H;    g_V[t-1] = g_H (1 - 1/tau)   (IF: 1/tau = 0)
    g_(1/tau) += g_H (X[t] - (V[t-1] - V_reset)) = g_H (H[t] - V[t-1]) tau   (decay_input)
              += -g_H (V[t-1] - V_reset)                                    (otherwise)
"""

from typing import Optional, Union

import torch

from snnexp.neurons.functional import charge, reset

Tensor = torch.Tensor


class _LIFMultistep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_seq, tau_inv, surrogate, v_threshold, v_reset, decay_input, detach_reset):
        leak_to = 0.0 if v_reset is None else v_reset
        v = torch.full_like(x_seq[0], leak_to)
        h_seq = torch.empty_like(x_seq)
        spikes = torch.empty_like(x_seq)
        for t in range(x_seq.shape[0]):
            h = charge(v, x_seq[t], tau_inv, leak_to, decay_input)
            s = (h >= v_threshold).to(x_seq.dtype)
            v = reset(h, s, v_threshold, v_reset)
            h_seq[t] = h
            spikes[t] = s
        tau_tensor = tau_inv if isinstance(tau_inv, Tensor) else None
        ctx.save_for_backward(h_seq, spikes.bool(), tau_tensor)
        ctx.tau_inv = tau_inv if tau_tensor is None else None
        ctx.surrogate, ctx.v_threshold, ctx.v_reset = surrogate, v_threshold, v_reset
        ctx.decay_input, ctx.detach_reset = decay_input, detach_reset
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        h_seq, spikes, tau_tensor = ctx.saved_tensors
        tau_inv = tau_tensor if tau_tensor is not None else ctx.tau_inv
        v_th, v_reset = ctx.v_threshold, ctx.v_reset
        leak_to = 0.0 if v_reset is None else v_reset
        want_tau = tau_tensor is not None and ctx.needs_input_grad[1]
        grad_x = torch.empty_like(h_seq)
        grad_v = torch.zeros_like(h_seq[0])
        grad_tau = torch.zeros((), dtype=h_seq.dtype, device=h_seq.device)
        for t in reversed(range(h_seq.shape[0])):
            h, s = h_seq[t], spikes[t].to(h_seq.dtype)
            sg = ctx.surrogate.grad(h - v_th)
            if v_reset is None:
                dv_dh = 1.0 if ctx.detach_reset else 1.0 - v_th * sg
            else:
                dv_dh = 1.0 - s if ctx.detach_reset else 1.0 - s + (v_reset - h) * sg
            grad_h = grad_spikes[t] * sg + grad_v * dv_dh
            if tau_inv is None:  # IF
                grad_x[t] = grad_h
                grad_v = grad_h
                continue
            grad_x[t] = grad_h * tau_inv if ctx.decay_input else grad_h
            grad_v = grad_h * (1.0 - tau_inv)
            if want_tau:
                v_prev = reset(h_seq[t - 1], spikes[t - 1].to(h_seq.dtype), v_th, v_reset) if t > 0 \
                    else torch.full_like(h, leak_to)
                if ctx.decay_input:
                    grad_tau = grad_tau + (grad_h * (h - v_prev)).sum() / tau_inv
                else:
                    grad_tau = grad_tau - (grad_h * (v_prev - leak_to)).sum()
        grad_tau_out = grad_tau.reshape(tau_tensor.shape).to(tau_tensor.dtype) if want_tau else None
        return grad_x, grad_tau_out, None, None, None, None, None


def lif_multistep_fused(
    x_seq: Tensor,
    tau_inv: Union[float, Tensor, None],
    surrogate,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
) -> Tensor:
    """`functional.lif_multistep` (spikes only) with the fused backward above."""
    return _LIFMultistep.apply(x_seq, tau_inv, surrogate, float(v_threshold),
                               None if v_reset is None else float(v_reset), bool(decay_input), bool(detach_reset))
