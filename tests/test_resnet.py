"""Spiking ResNets: the same convolution and linear layers as torchvision's ResNets (the peer for the
architecture), the residual joins as written in their papers, and per-layer gradient norms in TensorBoard."""

from functools import partial

import pytest
import torch
import torchvision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from snnexp.layers import BatchNormThroughTime, NoNorm
from snnexp.models import ModelError, SpikingResNet
from snnexp.models.resnet import Block
from snnexp.neurons import IF, PLIF

PLIF_ = partial(PLIF, detach_reset=True)


def weight_shapes(model, types):
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, types)]


@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("connection", ["spiking", "add", "iand"])
def test_layers_match_torchvision(depth, connection):
    ours = SpikingResNet(depth, (3, 224, 224), 1000, PLIF_, BatchNormThroughTime, connection, stem="imagenet")
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    assert weight_shapes(ours, layers) == weight_shapes(theirs, layers)
    assert len(weight_shapes(ours, BatchNormThroughTime)) == len(weight_shapes(theirs, torch.nn.BatchNorm2d))


def test_cifar_stem_runs_a_sequence():
    net = SpikingResNet(18, (3, 32, 32), 10, PLIF_, BatchNormThroughTime)
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


def test_bad_options_are_model_errors():
    with pytest.raises(ModelError, match="model.depth=20"):
        SpikingResNet(20, (3, 32, 32), 10, PLIF_, BatchNormThroughTime)
    with pytest.raises(ModelError, match="model.connection='or'"):
        SpikingResNet(18, (3, 32, 32), 10, PLIF_, BatchNormThroughTime, connection="or")


def test_resnet_trains_and_logs_gradient_norms_per_layer(tmp_path):
    from hydra import compose, initialize_config_dir

    from snnexp.cli import conf_dir
    from snnexp.engine import fit

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=resnet18", "model.connection=add", "model.width=8", "trainer.epochs=1", "trainer.max_steps=2",
            "trainer.progress=false"])
    fit(cfg, tmp_path, hparams={})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    norms = [t for t in events.Tags()["scalars"] if t.startswith("grad_norm/")]
    assert "grad_norm/0.module" in norms  # the stem conv
    assert len(norms) >= 20  # every conv, BN, PLIF and the classifier
    assert all(events.Scalars(t)[0].value >= 0 for t in norms)
