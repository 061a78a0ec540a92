"""NeuNorm against its equations (docs/science.md, section 3), written out by hand."""

import torch

from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import LIF
from snnexp.nn.norms import NeuNorm


def test_conv_maps_follow_the_equation():
    k = 0.5  # v / F = 1 - k = 0.5
    layer = NeuNorm(2, k_tau2=k)
    z = torch.zeros(2, 1, 2, 1, 2)  # [T, B, F=2, H=1, W=2]
    z[0, 0, :, 0, 0] = torch.tensor([1.0, 1.0])  # both maps spike at (0, 0) at t=0
    z[1, 0, 0, 0, 1] = 1.0  # map 0 spikes at (0, 1) at t=1
    layer(z)  # materialises U
    with torch.no_grad():
        layer.u.copy_(torch.tensor([[2.0, 4.0]]))
    y = layer(z)
    # x[0] = 0.5 * 0 + 0.5 * sum_f z = (1.0, 0.0);  x[1] = 0.5 * x[0] + 0.5 * sum_f z[1] = (0.5, 0.5)
    # y = z - U * x: U = (2, 4)
    expected = z.clone()
    expected[0, 0, :, 0, 0] -= 2.0 * 1.0
    expected[1, 0, :, 0, 0] -= 2.0 * 0.5
    expected[1, 0, :, 0, 1] -= 4.0 * 0.5
    torch.testing.assert_close(y, expected)
    assert layer.u.shape == (1, 2)  # the feature-map size


def test_feature_vectors_and_gradient_of_u():
    layer = NeuNorm(3, k_tau2=0.9)
    z = torch.tensor([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]])  # [T=2, B=1, F=3]
    y = layer(z)
    torch.testing.assert_close(y, z)  # U starts at 0: the identity
    # x[0] = 0.1 * 2 = 0.2; x[1] = 0.9 * 0.2 + 0.1 * 2 = 0.38; d(sum y)/dU = -(3 x[0] + 3 x[1]) = -1.74
    y.sum().backward()
    torch.testing.assert_close(layer.u.grad, torch.tensor(-1.74))


def test_in_a_network_after_the_neuron():
    net = SpecNet("c8k3s1-SN-BN-c8k3s1-SN-BN-FC10-SN", (2, 8, 8), 10, LIF, lambda c: NeuNorm(c))
    out = net(torch.rand(3, 2, 2, 8, 8))
    assert out.shape == (3, 2, 10)
    assert sum(isinstance(m, NeuNorm) for m in net.modules()) == 2


def test_u_is_a_real_parameter_before_the_first_batch():
    net = SpecNet("c8k3s1-SN-BN-FC10-SN", (2, 8, 8), 10, LIF, lambda c: NeuNorm(c))
    (u,) = [p for name, p in net.named_parameters() if name.endswith(".u")]
    assert u.shape == (8, 8)  # materialised at build time: an optimizer built now trains it
