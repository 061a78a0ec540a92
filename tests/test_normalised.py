"""BN through time joined with the spiking layer after it (snnexp.ops.normalised) against the layers run apart
(BN's own forward, which tests/test_layers.py checks against PyTorch's BN of the T copies): spikes, every gradient
(input, BN's weight and bias, the neuron's tau) and BN's running statistics, in training and in eval mode, for each
neuron, reset, surrogate and layout the kernels take, with and without the max pool after the neuron."""

import pytest
import torch
from torch import nn

from kernel_neurons import NEURONS, SURROGATES, over_a_block
from snnexp.nn.fusion import FusedBlock, fuse_blocks
from snnexp.nn.layers import SeqToANN, run_layers
from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import PLIF
from snnexp.nn.norms import BatchNormOverTime, ThresholdDependentBatchNorm
from snnexp.nn.pooling import MaxPool2d
from snnexp.nn.surrogate import ATan

F64 = torch.float64


def block(neuron, channels, pool=False, norm=BatchNormOverTime, dtype=F64, **bn_kwargs):
    """BN-SN(-MPk2s2) with BN's affine parameters and running statistics away from their initial values."""
    torch.manual_seed(0)
    bn = norm(channels, **bn_kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.2, 0.8)
        if bn.track_running_stats:
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    layers = [bn, neuron] + ([SeqToANN(MaxPool2d(2, 2))] if pool else [])
    return nn.ModuleList(layers).to(dtype)


def sequence(shape, channels_last=False, dtype=F64, seed=1):
    """Input currents [T, B, C, ...] with a mean and scale per channel that BN has to take out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dtype=dtype, generator=g)
    scale = torch.rand(shape[2], dtype=dtype, generator=g) * 2 + 0.5
    shift = torch.randn(shape[2], dtype=dtype, generator=g)
    x = x * scale.view(-1, *[1] * (len(shape) - 3)) + shift.view(-1, *[1] * (len(shape) - 3))
    if channels_last:
        return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    return x


def as_block(layers):
    """The FusedBlock of BN, neuron (and pool) in `layers` (the same modules)."""
    return FusedBlock(layers[0], layers[1], layers[2] if len(layers) > 2 else None)


def run_both(joined, separate, x, count_joins):
    """`joined` through its FusedBlock, `separate` layer by layer."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    joins = count_joins()
    y1 = as_block(joined)(x1)
    assert count_joins() == joins + 1, "the BN did not join the neuron"
    y2 = run_layers(separate, x2)
    return (x1, y1), (x2, y2)


def assert_same(make, x, count_joins, training=True, rtol=1e-10, atol=1e-12):
    """Spikes equal, gradients and BN's buffers equal to float64 rounding, after two steps (running statistics)."""
    joined, separate = make(), make()
    joined.train(training)
    separate.train(training)
    for step in range(2):
        (x1, y1), (x2, y2) = run_both(joined, separate, x * (1 + 0.1 * step), count_joins)
        assert torch.equal(y1, y2)
        assert y2.mean() > 0.02 and y2.mean() < 0.98  # neither silent nor saturated
        g = torch.randn_like(y2, generator=torch.Generator().manual_seed(step))
        params1, params2 = list(joined.parameters()), list(separate.parameters())
        grads1 = torch.autograd.grad((y1 * g).sum(), [x1, *params1])
        grads2 = torch.autograd.grad((y2 * g).sum(), [x2, *params2])
        for (name, _), a, b in zip([("x", None), *joined.named_parameters()], grads1, grads2):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"d/d{name}: {m}")
            assert b.abs().sum() > 0, name
        for (name, a), b in zip(joined[0].named_buffers(), separate[0].buffers()):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("pool", [False, True], ids=["BN-SN", "BN-SN-MP"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(NEURONS))
def test_equals_bn_and_the_neuron_apart(name, training, pool, count_joins):
    x = sequence((4, 3, 5, 6, 8), channels_last=True)
    assert_same(lambda: block(NEURONS[name](ATan(2.0)), 5, pool), x, count_joins, training)


@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: type(s).__name__)
def test_every_surrogate(surrogate, count_joins):
    assert_same(lambda: block(PLIF(surrogate=surrogate), 5, pool=True), sequence((4, 3, 5, 6, 8)), count_joins)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape, channels_last, pool", [
    ((2, 3, 5, 29, 31), False, False),   # NCHW maps: channels of H * W elements, blocks across and inside channels
    ((2, 3, 5, 29, 31), True, False),    # channels last, 5 channels: blocks start at every channel
    ((2, 1, None, 4, 4), True, True),    # more channels than a kernel block
    ((3, 2, 6, 9, 7), False, True),      # odd maps: rows and columns outside every window
    ((5, 7, 37), False, False),          # feature vectors [T, B, C] (BN before an FC layer's neurons)
    ((2, 3, 700, 1, 1), False, False),   # one pixel per map
], ids=["NCHW", "channels_last", "channels-over-a-block", "odd-map-pooled", "features", "1x1"])
def test_layouts_and_sizes(shape, channels_last, pool, training, count_joins):
    shape = over_a_block(shape)
    x = sequence(shape, channels_last)
    assert_same(lambda: block(PLIF(), shape[2], pool), x, count_joins, training)


@pytest.mark.parametrize("kwargs", [dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                                    dict(eps=0.1)], ids=["cumulative-average", "no-affine", "no-running-stats", "eps"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_settings(kwargs, training, count_joins):
    make = lambda: block(PLIF(), 5, pool=True, **kwargs)  # noqa: E731
    assert_same(make, sequence((4, 3, 5, 6, 8), channels_last=True), count_joins, training)


def test_tdbn_joins_too(count_joins):
    make = lambda: block(PLIF(), 5, True, ThresholdDependentBatchNorm, alpha=0.5, v_threshold=1.0)  # noqa: E731
    assert_same(make, sequence((4, 3, 5, 6, 8), channels_last=True), count_joins)


def test_float32_within_float32_rounding(count_joins):
    """BN(x) is formed as PyTorch forms it, but not necessarily to the last bit (alpha and beta come from the same
    statistics, computed apart): spikes equal but for the rare potential that lands on the threshold, gradients to
    float32 tolerance."""
    x = sequence((8, 8, 16, 12, 12), channels_last=True, dtype=torch.float32)
    joined, separate = (block(PLIF(), 16, pool=True, dtype=torch.float32) for _ in range(2))
    (x1, y1), (x2, y2) = run_both(joined, separate, x, count_joins)
    assert (y1 != y2).float().mean() < 1e-3
    grads1 = torch.autograd.grad(y1.sum(), [x1, *joined.parameters()])
    grads2 = torch.autograd.grad(y2.sum(), [x2, *separate.parameters()])
    for a, b in zip(grads1, grads2):
        assert (a - b).norm() <= 1e-3 * b.norm()
    torch.testing.assert_close(joined[0].running_mean, separate[0].running_mean)
    torch.testing.assert_close(joined[0].running_var, separate[0].running_var)


def net():
    torch.manual_seed(0)
    return SpecNet("{c8k3s1-BN-SN-MPk2s2}*2-FC16-BN-SN-FC10-SN", (2, 8, 8), 10, PLIF, BatchNormOverTime).double()


def test_a_network_joins_every_bn_and_trains_alike(count_joins):
    """The PLIF paper's blocks in a network (fuse_blocks): each BN joins its neuron (conv and FC alike), and two Adam
    steps leave the same weights and BN statistics (under the same state-dict keys) as the network unfused."""
    joined, separate = fuse_blocks(net()), net()
    x = (torch.rand(4, 3, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2)) < 0.3).to(F64)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (joined, separate)]
    for step in range(2):
        before = count_joins()
        outputs = [model(x) for model in (joined, separate)]
        assert count_joins() - before == 3
        assert torch.equal(*outputs)
        for out, opt in zip(outputs, opts):
            opt.zero_grad()
            (out * torch.arange(10, dtype=F64)).sum().backward()
            opt.step()
    assert list(joined.state_dict()) == list(separate.state_dict())
    for a, b in zip(joined.state_dict().values(), separate.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_an_unfused_network_runs_every_layer_apart(count_joins):
    """trainer.join_layers=false (snnexp.train.loop then leaves fuse_blocks out): no BN joins, the same output."""
    joined, apart_net = fuse_blocks(net()), net()
    x = (torch.rand(4, 3, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2)) < 0.3).to(F64)
    before = count_joins()
    assert torch.equal(apart_net(x), joined(x))
    assert count_joins() - before == 3  # the joined network's three; none from the other


def test_direct_coding_runs_the_first_bn_apart(count_joins):
    """With one image repeated over T (direct coding) the first BN runs once on [B, ...] (snnexp.nn.layers): there the
    join gains nothing (bench/bench_train_step.py), so only the later blocks' BNs join."""
    model = fuse_blocks(net())
    image = torch.rand(3, 2, 8, 8, dtype=F64)
    before = count_joins()
    model(image.unsqueeze(0).expand(4, *image.shape))
    assert count_joins() - before == 2


def test_where_it_does_not_join_bn_runs_apart(count_joins):
    x = sequence((3, 2, 4, 6, 6))
    cases = [
        (block(PLIF(backend="reference"), 4), x),        # no kernel neuron
        (block(PLIF(), 4), x.to(torch.bfloat16)),        # a dtype the kernels do not take
        (block(PLIF(), 4), x.transpose(3, 4)),           # a layout they do not read
    ]
    for layers, inputs in cases:
        layers = layers.to(inputs.dtype)
        before = count_joins()
        as_block(layers)(inputs)
        assert count_joins() == before


def test_one_value_per_channel_is_bns_own_error(count_joins):
    layers = block(PLIF(), 4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        as_block(layers)(sequence((1, 1, 4)))


def test_without_the_cpu_kernels_bn_runs_apart_and_the_op_refuses_a_bn(monkeypatch, count_joins):
    """No C compiler: the network runs BN as its own layer (the reference neurons cannot take it), and handing the op
    a BN anyway is an error rather than a BN silently left out."""
    from snnexp.ops import fused
    from snnexp.ops.normalised import batch_norm

    layers = block(PLIF(), 4)
    x = sequence((3, 2, 4, 6, 6))
    norm = batch_norm(layers[0], x)
    monkeypatch.setattr(fused, "_UNAVAILABLE", {"cpu": "no C compiler found"})
    before = count_joins()
    as_block(layers)(x)
    assert count_joins() == before
    with pytest.raises(ValueError, match="needs the CPU kernels"):
        fused.lif_multistep_fused(x, 0.5, ATan(), norm=norm)
