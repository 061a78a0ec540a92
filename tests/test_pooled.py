"""A spiking layer and the tiling max pool after it as one op (snnexp.ops.pooled) against the two layers run
apart: pooled spikes and every gradient equal, for each neuron, reset, surrogate and layout the fused kernel takes;
the network runs it where it applies and runs the layers apart where a hook watches them."""

import pytest
import torch

from kernel_neurons import NEURONS, SURROGATES, over_a_block
from snnexp.nn.fusion import fuse_blocks, lif_max_pool
from snnexp.nn.layers import Repeated, run_layers
from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import PLIF
from snnexp.nn.norms import BatchNormOverTime
from snnexp.nn.pooling import MaxPool2d
from snnexp.ops.pooled import _lif_pool_op

F64 = torch.float64


def sequence(shape, channels_last, steps, dtype=F64, seed=0):
    """Inputs of a neuron layer: [T, B, C, H, W], or one step [B, C, H, W] (direct coding, `steps`)."""
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 1.5
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if steps:
        return x.contiguous(memory_format=fmt)
    return x.flatten(0, 1).contiguous(memory_format=fmt).unflatten(0, shape[:2])


def apart(neuron, pool, x, steps):
    spikes = neuron(Repeated(x, steps)) if steps else neuron(x)
    return pool(spikes.flatten(0, 1)).unflatten(0, spikes.shape[:2])


def assert_same(neuron, pool, x, steps):
    """Forward equal; gradients of x and of the neuron's parameters equal to float64 rounding."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    joint = lif_max_pool(neuron, pool, x1, steps)
    assert joint is not None
    separate = apart(neuron, pool, x2, steps)
    assert torch.equal(joint, separate)
    assert separate.mean() > 0.02 and (separate.numel() <= 8 or separate.mean() < 0.98)  # not silent, not saturated
    g = torch.randn_like(separate)
    params = list(neuron.parameters())
    for a, b in zip(torch.autograd.grad((joint * g).sum(), [x1, *params]),
                    torch.autograd.grad((separate * g).sum(), [x2, *params])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert a.abs().sum() > 0


@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", sorted(NEURONS))
def test_equals_the_neuron_and_the_pool_apart(name, surrogate):
    assert_same(NEURONS[name](surrogate), MaxPool2d(2, 2), sequence((4, 3, 5, 6, 8), True, 0), 0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("steps", [0, 4], ids=["sequence", "direct-coding"])
@pytest.mark.parametrize("shape, k", [((3, 5, 7, 9), 2), ((1, None, 4, 4), 2), ((2, 4, 9, 7), 3), ((1, 2, 4, 4), 4)],
                         ids=["odd-map", "channels-over-a-block", "k3", "one-window"])
def test_layouts_sizes_and_windows(shape, k, steps, channels_last):
    shape = over_a_block(shape)
    x = sequence(shape if steps else (3, *shape), channels_last, steps)
    assert_same(PLIF(), MaxPool2d(k, k), x, steps)


def test_long_sequences_in_smaller_blocks():
    """T = 400: the backward's blocks shrink with T (lif_cpu.c, backward_block_size: 832 neurons here), so these 900
    channels of a pixel are cut into two blocks."""
    assert_same(PLIF(), MaxPool2d(2, 2), sequence((400, 1, 900, 2, 2), True, 0), 0)


def test_float32_gives_the_same_spikes_and_gradients():
    assert_same(PLIF(), MaxPool2d(2, 2), sequence((4, 8, 32, 14, 14), True, 0, torch.float32), 0)


def test_where_it_does_not_apply_it_says_so():
    x = sequence((3, 2, 4, 6, 6), False, 0)
    assert lif_max_pool(PLIF(), MaxPool2d(2, 1), x) is None  # overlapping windows
    assert lif_max_pool(PLIF(backend="reference"), MaxPool2d(2, 2), x) is None
    assert lif_max_pool(PLIF(), MaxPool2d(2, 2), x.to(torch.bfloat16)) is None
    assert lif_max_pool(PLIF(), MaxPool2d(2, 2), x.transpose(3, 4)) is None  # neither NCHW nor channels_last


def test_the_custom_op_checks():
    """torch.library.opcheck: schema, fake implementation, autograd registration, AOT dispatch (torch.compile)."""
    norm = torch.stack([torch.rand(3) + 0.5, torch.randn(3), torch.randn(3), torch.rand(3) + 0.5]).to(F64)
    for x, steps, cl in [(sequence((2, 2, 3, 4, 4), False, 0), 0, False), (sequence((2, 3, 4, 4), True, 3), 3, True)]:
        for bn, inner in [(None, 1), (norm.clone().requires_grad_(), 1 if cl else 16)]:  # a BN before: normalised.py
            for count in (False, True):  # count: the spike counts of a test pass as a third output
                tau_inv = torch.tensor(0.5, dtype=F64, requires_grad=True)
                args = (x.requires_grad_(), tau_inv, bn, "decay_input", 1.0, 0.0, False, True, "atan", 2.0, 0.0,
                        steps, inner, bn is not None, 2, 2, cl, count)
                torch.library.opcheck(_lif_pool_op, args)


def net():
    """The PLIF paper's blocks, fused (snnexp.nn.fusion)."""
    torch.manual_seed(0)
    return fuse_blocks(SpecNet("{c8k3s1-BN-SN-MPk2s2}*2-FC10-SN", (1, 8, 8), 10, PLIF, BatchNormOverTime).double())


def test_a_network_runs_it_and_a_hook_sees_the_spikes():
    x = torch.rand(4, 3, 1, 8, 8, dtype=F64)
    calls = []
    joint_net, hooked_net = net(), net()
    for layer in hooked_net.modules():  # a hook on every neuron: its block runs apart, so that it sees the spikes
        if isinstance(layer, PLIF):
            layer.register_forward_hook(lambda m, i, out: calls.append(out.shape))
    ops = []
    with torch.profiler.profile() as prof:
        out = joint_net(x)
    ops = {e.name for e in prof.events()}
    assert "snnexp::lif_max_pool" in ops
    hooked = hooked_net(x)
    assert calls == [(4, 3, 8, 8, 8), (4, 3, 8, 4, 4), (4, 3, 10)]  # the full spikes, before pooling
    assert torch.equal(out, hooked)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * g).sum(), list(joint_net.parameters())),
                    torch.autograd.grad((hooked * g).sum(), list(hooked_net.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_direct_coding_runs_the_first_neuron_and_pool_jointly():
    net_ = net()
    image = torch.rand(3, 1, 8, 8, dtype=F64)
    repeated = image.unsqueeze(0).expand(4, *image.shape)  # direct coding's view: time stride 0
    with torch.profiler.profile() as prof:
        out = run_layers(net_, repeated)
    assert sum(e.name == "snnexp::lif_max_pool" for e in prof.events()) == 2
    torch.testing.assert_close(out, run_layers(net_, repeated.contiguous()), rtol=0, atol=0)
