"""The fused multi-step LIF / IF / PLIF op against the reference definition (functional.lif_multistep, whose
gradient autograd derives op by op): the same spikes, and the same input and 1/tau gradients, in float64 to
1e-10 and in float32 to float32 tolerance, for every surrogate, hard and soft reset, detach_reset and
decay_input both ways, fixed and learnable tau.

(torch.autograd.gradcheck does not apply as such: the forward is a Heaviside step, whose finite differences
are 0; the surrogate gradient is a chosen stand-in, and autograd through the reference is its definition.)"""

import itertools
import zlib

import pytest
import torch

from snnexp.neurons.functional import lif_multistep
from snnexp.neurons.fused import lif_multistep_fused
from snnexp.surrogate import ATan, FastSigmoid, Rect, Sigmoid, Triangle

SURROGATES = {"atan": ATan, "sigmoid": Sigmoid, "rect": Rect, "fast_sigmoid": FastSigmoid, "triangle": Triangle}
CASES = [
    case for case in itertools.product(
        ["if", "lif", "plif"], [0.0, -0.3, None], [True, False], [True, False], sorted(SURROGATES), [1, 3, 8])
    if not (case[0] == "if" and not case[3])  # IF has no decay_input
    and (case[4] == "atan" or case[5] == 3)  # every surrogate on one T keeps this fast
]


def run_both(kind, v_reset, detach, decay, sg, T, dtype, shape=(3, 2, 5)):
    torch.manual_seed(zlib.crc32(repr((kind, v_reset, detach, decay, sg, T)).encode()))
    x = (torch.rand(T, *shape, dtype=dtype) * 4.0 - 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    weights = torch.randn(T, *shape, dtype=dtype)  # a loss that weighs every spike differently
    surrogate = SURROGATES[sg]()
    w = torch.tensor(0.3, dtype=dtype, requires_grad=True)  # PLIF: 1/tau = sigmoid(w)
    w_ref = w.detach().clone().requires_grad_()
    tau_inv = {"if": (None, None), "lif": (0.4, 0.4), "plif": (torch.sigmoid(w), torch.sigmoid(w_ref))}[kind]
    common = dict(v_threshold=1.0, v_reset=v_reset, decay_input=decay, detach_reset=detach)
    ours = lif_multistep_fused(x, tau_inv[0], surrogate, **common)
    ref = lif_multistep(x_ref, tau_inv[1], surrogate, **common)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    return ours, ref, (x.grad, x_ref.grad), (w.grad, w_ref.grad)


@pytest.mark.parametrize("kind,v_reset,detach,decay,sg,T", CASES)
def test_fused_equals_the_reference_in_float64(kind, v_reset, detach, decay, sg, T):
    ours, ref, (gx, gx_ref), (gw, gw_ref) = run_both(kind, v_reset, detach, decay, sg, T, torch.float64)
    assert torch.equal(ours, ref)
    assert 0 < ref.mean() < 1 or T == 1  # the case exercises firing and not firing
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    if kind == "plif":
        torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
        assert gw_ref.abs() > 0 or (T == 1 and not decay)  # from rest, V[t-1] - V_reset = 0 at t = 1


@pytest.mark.parametrize("kind,v_reset,detach,decay", [
    (k, r, d, i) for k, r, d, i in itertools.product(["if", "lif", "plif"], [0.0, None], [True, False], [True, False])
    if not (k == "if" and not i)])
def test_fused_equals_the_reference_in_float32(kind, v_reset, detach, decay):
    ours, ref, (gx, gx_ref), (gw, gw_ref) = run_both(kind, v_reset, detach, decay, "atan", 8, torch.float32,
                                                   shape=(4, 8, 6, 6))
    assert torch.equal(ours, ref)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    if kind == "plif":
        torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-5)


def test_only_the_potential_and_bool_spikes_are_saved():
    x = torch.rand(4, 2, 3, requires_grad=True)
    w = torch.tensor(0.0, requires_grad=True)
    out = lif_multistep_fused(x, torch.sigmoid(w), ATan())
    saved = out.grad_fn.saved_tensors
    assert [t.dtype for t in saved[:2]] == [torch.float32, torch.bool]
    assert all(t.shape == x.shape for t in saved[:2])
