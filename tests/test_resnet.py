"""Spiking ResNets: the same convolution and linear layers as torchvision's ResNets (the peer for the
architecture), the residual joins as written in their papers, and per-layer gradient norms in TensorBoard."""

import copy
from functools import partial

import pytest
import torch
import torchvision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from snnexp.nn import fusion
from snnexp.nn.models import ModelError, SpikingResNet
from snnexp.nn.models.resnet import CONNECTIONS, Block
from snnexp.nn.neurons import IF, PLIF
from snnexp.nn.norms import BatchNormOverTime, NoNorm

PLIF_ = partial(PLIF, detach_reset=True)


def weight_shapes(model, types):
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, types)]


@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("connection", ["spiking", "add", "iand"])
def test_layers_match_torchvision(depth, connection):
    ours = SpikingResNet(depth, (3, 224, 224), 1000, PLIF_, BatchNormOverTime, connection, stem="imagenet")
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    assert weight_shapes(ours, layers) == weight_shapes(theirs, layers)
    assert len(weight_shapes(ours, BatchNormOverTime)) == len(weight_shapes(theirs, torch.nn.BatchNorm2d))


def test_cifar_stem_runs_a_sequence():
    net = SpikingResNet(18, (3, 32, 32), 10, PLIF_, BatchNormOverTime)
    out = net(torch.rand(2, 3, 3, 32, 32))
    assert out.shape == (2, 3, 10) and set(out.unique().tolist()) <= {0.0, 1.0}


def test_residual_joins():
    torch.manual_seed(0)
    x = (torch.rand(2, 1, 4, 3, 3) > 0.5).float()  # spikes into a block that keeps the shape
    for connection in ("spiking", "add", "iand"):
        block = Block("basic", 4, 4, 1, IF, NoNorm, connection)
        body = block.body(x)
        if connection == "spiking":  # SN(BN(conv) + x)
            expected = IF()(body + x)
        elif connection == "add":  # SN(BN(conv)) + x
            expected = IF()(body) + x
        else:  # (1 - SN(BN(conv))) * x
            expected = (1 - IF()(body)) * x
        torch.testing.assert_close(block(x), expected)


def resnet(connection):
    torch.manual_seed(0)
    return SpikingResNet(18, (3, 16, 16), 10, PLIF_, BatchNormOverTime, connection, width=4).double()


def forward_backward(net, x, make_input):
    """Output spikes for the input make_input(x), and the gradients of x and of every parameter for one weighted
    sum of them."""
    x = x.clone().requires_grad_()
    out = net(make_input(x))
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    return out, torch.autograd.grad((out * g).sum(), [x, *fusion.parameters(net)])


def assert_same_run(a, b, x, input_a=lambda x: x, input_b=lambda x: x):
    (out_a, grads_a), (out_b, grads_b) = forward_backward(a, x, input_a), forward_backward(b, x, input_b)
    assert torch.equal(out_a, out_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in grads_a[1:])
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(ba, bb, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_joined_layers_equal_the_layers_apart(connection, count_joins):
    """Each BN-SN of the stem, the bodies and the shortcuts runs as one op (snnexp.ops.normalised), with the same
    spikes, gradients and BN statistics as every layer apart (unfused, what trainer.join_layers=false builds), in
    float64. ResNet-18: the stem's, one in each of the 8 bodies, and with SEW connections (add, iand) the last one of
    each body (its own neuron) and the 3 downsampling shortcuts'."""
    apart = resnet(connection)
    joined = fusion.fuse_blocks(copy.deepcopy(apart))
    x = torch.rand(3, 2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    assert_same_run(joined, apart, x)
    assert count_joins() == (9 if connection == "spiking" else 20)


def test_direct_coding_runs_the_stem_once():
    """One image repeated over T (the direct encoder's view, time stride 0): the stem's conv and BN run once on
    [B, ...] (snnexp.nn.layers.run_layers), with the spikes, gradients and BN statistics of T materialised copies."""
    once = resnet("add")
    copies = copy.deepcopy(once)
    seen = []
    once[0].module.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    image = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    assert_same_run(once, copies, image, lambda x: x.expand(4, *x.shape), lambda x: x.repeat(4, 1, 1, 1, 1))
    assert seen == [2]  # the batch, not T x batch


def test_bad_options_are_model_errors():
    with pytest.raises(ModelError, match="model.depth=20"):
        SpikingResNet(20, (3, 32, 32), 10, PLIF_, BatchNormOverTime)
    with pytest.raises(ModelError, match="model.connection='or'"):
        SpikingResNet(18, (3, 32, 32), 10, PLIF_, BatchNormOverTime, connection="or")


def test_resnet_trains_and_logs_gradient_norms_per_layer(tmp_path):
    from hydra import compose, initialize_config_dir

    from snnexp.cli import conf_dir
    from snnexp.train.loop import fit

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=resnet18", "model.connection=add", "model.width=8", "trainer.epochs=1", "trainer.max_steps=2",
            "trainer.progress=false"])
    fit(cfg, tmp_path, hparams={})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    norms = {t for t in events.Tags()["scalars"] if t.startswith("grad_norm/")}
    # by layer, each over all its parameters: the stem (conv, BN, PLIF), the 8 blocks, the classifier (FC, PLIF)
    assert norms == {f"grad_norm/layer{k}" for k in range(1, 11)}
    assert all(events.Scalars(t)[0].value > 0 for t in norms)
