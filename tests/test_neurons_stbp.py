"""STBP's neuron against its own equation, u[t] = k u[t-1] (1 - o[t-1]) + I[t], written out here."""

import pytest
import torch

from snnexp.nn.neurons import STBPLIF
from snnexp.nn.surrogate import Rect


def stbp_explicit(current, k, v_th, surrogate):
    u, o, spikes = torch.zeros_like(current[0]), torch.zeros_like(current[0]), []
    for i_t in current:
        u = k * u * (1 - o) + i_t
        o = surrogate(u - v_th)
        spikes.append(o)
    return torch.stack(spikes)


def test_hand_computed_sequence():
    # k = 0.5, V_th = 1: I = 0.6, 0.6, 0.6, 2.0
    # u1 = 0.6 -> 0; u2 = 0.3 + 0.6 = 0.9 -> 0; u3 = 0.45 + 0.6 = 1.05 -> 1; u4 = 0 (reset) + 2.0 -> 1
    out = STBPLIF(k=0.5, v_threshold=1.0)(torch.tensor([[0.6], [0.6], [0.6], [2.0]]))
    assert out.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("k,v_th,width", [(0.2, 0.5, 1.0), (0.25, 0.75, 0.5), (0.9, 1.0, 1.0)])
def test_same_spikes_and_gradients_as_the_explicit_formula(k, v_th, width):
    torch.manual_seed(0)
    current = (torch.rand(12, 4, 16) * 1.2).double().requires_grad_()
    current2 = current.detach().clone().requires_grad_()
    weights = torch.randn(12, 4, 16).double()
    ours = STBPLIF(k=k, v_threshold=v_th, surrogate=Rect(width))(current)
    ref = stbp_explicit(current2, k, v_th, Rect(width))
    assert torch.equal(ours, ref) and 0 < ref.mean() < 1
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(current.grad, current2.grad)


def test_k_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"neuron.k=1.0 is out of range: must be in \(0, 1\)"):
        STBPLIF(k=1.0)
