"""Parity with a peer: our IF, LIF and PLIF give the same spikes and the same input and parameter
gradients as SpikingJelly's multi-step neurons with the same settings (the `bench` extra installs it)."""

import itertools
import zlib

import pytest
import torch

sj = pytest.importorskip("spikingjelly.activation_based", reason="SpikingJelly (the bench extra) is not installed")
from spikingjelly.activation_based import neuron as sj_neuron  # noqa: E402
from spikingjelly.activation_based import surrogate as sj_surrogate  # noqa: E402

from snnexp.nn import surrogate as ours_surrogate  # noqa: E402
from snnexp.nn.neurons import IF, LIF, PLIF  # noqa: E402

SURROGATES = {  # ours, SpikingJelly's: the same function (docs/science.md, section 2)
    "atan": (lambda: ours_surrogate.ATan(2.0), lambda: sj_surrogate.ATan(alpha=2.0)),
    "atan_wide": (lambda: ours_surrogate.ATan(0.5), lambda: sj_surrogate.ATan(alpha=0.5)),
    "sigmoid": (lambda: ours_surrogate.Sigmoid(4.0), lambda: sj_surrogate.Sigmoid(alpha=4.0)),
}


def build(kind, v_reset, detach_reset, decay_input, surrogate, tau):
    ours_sg, sj_sg = SURROGATES[surrogate]
    common = dict(v_threshold=1.0, v_reset=v_reset, detach_reset=detach_reset)
    if kind == "if":
        return IF(surrogate=ours_sg(), **common), sj_neuron.IFNode(surrogate_function=sj_sg(), step_mode="m", **common)
    if kind == "lif":
        return (LIF(tau=tau, decay_input=decay_input, surrogate=ours_sg(), **common),
                sj_neuron.LIFNode(tau=tau, decay_input=decay_input, surrogate_function=sj_sg(), step_mode="m",
                                  **common))
    return (PLIF(tau0=tau, decay_input=decay_input, surrogate=ours_sg(), **common),
            sj_neuron.ParametricLIFNode(init_tau=tau, decay_input=decay_input, surrogate_function=sj_sg(),
                                        step_mode="m", **common))


CASES = [
    (kind, T, shape, v_reset, detach, decay, sg, tau)
    for kind, T, shape, v_reset, detach, decay, sg, tau in itertools.product(
        ["if", "lif", "plif"], [1, 4, 8], [(3, 7), (2, 3, 5, 5)], [0.0, None], [True, False], [True, False],
        ["atan", "atan_wide", "sigmoid"], [2.0, 3.0])
    if not (kind == "if" and (not decay or tau != 2.0))  # IF has neither decay_input nor tau
    and (sg == "atan" or (T == 4 and len(shape) == 4))  # every surrogate on one T and shape keeps this fast
]


@pytest.mark.parametrize("kind,T,shape,v_reset,detach,decay,sg,tau", CASES)
def test_same_spikes_and_gradients_as_spikingjelly(kind, T, shape, v_reset, detach, decay, sg, tau):
    torch.manual_seed(zlib.crc32(repr((kind, T, shape, v_reset, detach, decay, sg, tau)).encode()))
    ours, theirs = build(kind, v_reset, detach, decay, sg, tau)
    x = (torch.rand(T, *shape) * 3 - 0.5).requires_grad_()
    x_sj = x.detach().clone().requires_grad_()
    weights = torch.randn(T, *shape)  # a loss that weighs every spike differently

    s_ours = ours(x)
    s_sj = theirs(x_sj)
    torch.testing.assert_close(s_ours, s_sj, rtol=0, atol=0)
    assert 0 < s_ours.mean() < 1 or T == 1  # the case exercises firing and not firing

    (s_ours * weights).sum().backward()
    (s_sj * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_sj.grad, rtol=1e-5, atol=1e-6)
    if kind == "plif":
        torch.testing.assert_close(ours.w.grad, theirs.w.grad, rtol=1e-4, atol=1e-6)
