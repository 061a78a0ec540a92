"""The papers' named architectures (conf/model/plif_*.yaml, stbp_*.yaml) build for their datasets' shapes
with the layers of the papers' tables (docs/science.md, section 5)."""

from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, run_snnexp
from snnexp.nn.neurons import PLIF, STBPLIF
from snnexp.nn.norms import BatchNormOverTime, NeuNorm


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
                      neuron=partial(PLIF, detach_reset=True), norm=BatchNormOverTime)
    found_convs = [(m.in_channels, m.out_channels) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    found_fcs = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert found_convs == convs and found_fcs == fcs
    assert sum(isinstance(m, PLIF) for m in net.modules()) == len(convs) + 2
    with torch.no_grad():
        assert net(torch.rand(1, 1, *input_shape)).shape == (1, 1, classes)


@pytest.mark.parametrize("name,input_shape,convs,fcs,pools", [
    # Wu 2019: 128C3(enc)-128C3-AP2-384C3-384C3-AP2-1024FC-512FC-Voting on N-MNIST's 34x34 (-> 17 -> 8)
    ("stbp_nmnist", (2, 34, 34), [(2, 128), (128, 128), (128, 384), (384, 384)],
     [(384 * 8 * 8, 1024), (1024, 512), (512, 100)], 2),
    # and on CIFAR10-DVS downsampled by 3 (43x43 -> 21 -> 10)
    ("stbp_nmnist", (2, 43, 43), [(2, 128), (128, 128), (128, 384), (384, 384)],
     [(384 * 10 * 10, 1024), (1024, 512), (512, 100)], 2),
    # CIFARNet: 128C3(enc)-256C3-AP2-512C3-AP2-1024C3-512C3-1024FC-512FC-Voting on 32x32 (-> 16 -> 8)
    ("stbp_cifarnet", (3, 32, 32), [(3, 128), (128, 256), (256, 512), (512, 1024), (1024, 512)],
     [(512 * 8 * 8, 1024), (1024, 512), (512, 100)], 2),
])
def test_stbp_networks_have_neunorm_after_every_conv_layer(name, input_shape, convs, fcs, pools):
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    net = instantiate(cfg, input_shape=list(input_shape), num_outputs=10,
                      neuron=partial(STBPLIF, k=0.2, v_threshold=0.5), norm=NeuNorm)
    found_convs = [(m.in_channels, m.out_channels) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    found_fcs = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert found_convs == convs and found_fcs == fcs
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == pools
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 0
    kinds = [type(m).__name__ for m in net]
    # every conv is followed by its neuron and then NeuNorm, which feeds the next layer (I = W (*) (o - U x))
    for i, m in enumerate(net):
        if isinstance(getattr(m, "module", None), torch.nn.Conv2d):
            assert kinds[i + 1:i + 3] == ["STBPLIF", "NeuNorm"], kinds
    assert sum(k == "NeuNorm" for k in kinds) == len(convs)
    with torch.no_grad():
        assert net(torch.rand(2, 1, *input_shape)).shape == (2, 1, 10)  # 10 classes voted by 10 neurons each


def test_missing_cifar100_says_where_to_put_which_file(tmp_path):
    proc = run_snnexp("train", "dataset=cifar100", "dataset.download=false", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cifar-100-python.tar.gz" in proc.stderr and "eb9058c3a382ffc7106e4002c42a8d85" in proc.stderr
    assert f"{tmp_path / 'data'}/" in proc.stderr
