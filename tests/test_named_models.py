"""The PLIF paper's named architectures (conf/model/plif_*.yaml) build for their datasets' shapes."""

from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, run_snnexp
from snnexp.layers import BatchNormThroughTime
from snnexp.neurons import PLIF


@pytest.mark.parametrize("name,input_shape,classes,convs,fcs", [
    ("plif_mnist", (1, 28, 28), 10, [(1, 128), (128, 128)], [(128 * 7 * 7, 2048), (2048, 100)]),
    ("plif_mnist", (2, 34, 34), 10, [(2, 128), (128, 128)], [(128 * 8 * 8, 2048), (2048, 100)]),  # N-MNIST
    ("plif_cifar10", (3, 32, 32), 10, [(3, 256)] + [(256, 256)] * 5, [(256 * 8 * 8, 2048), (2048, 100)]),
    ("plif_dvs_cifar10", (2, 128, 128), 10, [(2, 128)] + [(128, 128)] * 3, [(128 * 8 * 8, 512), (512, 100)]),
    ("plif_dvs_gesture", (2, 128, 128), 11, [(2, 128)] + [(128, 128)] * 4, [(128 * 4 * 4, 512), (512, 110)]),
])
def test_named_architecture_builds_with_the_papers_layers(name, input_shape, classes, convs, fcs):
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    net = instantiate(cfg, input_shape=list(input_shape), num_outputs=classes,
                      neuron=partial(PLIF, detach_reset=True), norm=BatchNormThroughTime)
    found_convs = [(m.in_channels, m.out_channels) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    found_fcs = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert found_convs == convs and found_fcs == fcs
    assert sum(isinstance(m, PLIF) for m in net.modules()) == len(convs) + 2
    with torch.no_grad():
        assert net(torch.rand(1, 1, *input_shape)).shape == (1, 1, classes)


def test_missing_cifar100_says_where_to_put_which_file(tmp_path):
    proc = run_snnexp("train", "dataset=cifar100", "dataset.download=false", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cifar-100-python.tar.gz" in proc.stderr and "eb9058c3a382ffc7106e4002c42a8d85" in proc.stderr
    assert f"{tmp_path / 'data'}/" in proc.stderr
