"""snnexp.nn.fusion: the build-time pass that makes the papers' BN-SN-MP blocks one module each. What the joined ops
compute is checked against the layers apart in tests/test_normalised.py, test_pooled.py and test_resnet.py; here: the
pass itself (what it fuses, what it leaves), the names it keeps (state dict, optimizer order, metrics), the network
summary, and a run folder written before the pass existed."""

import copy
import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_snnexp
from snnexp.nn import fusion
from snnexp.nn.fusion import FusedBlock, Joined, fuse_blocks, original_name
from snnexp.nn.models import SpecNet, SpikingResNet
from snnexp.nn.neurons import ALIF, LIF, PLIF
from snnexp.nn.norms import BatchNormOverTime, NoNorm
from snnexp.train.build import build_run
from snnexp.train.evaluate import evaluate_checkpoint
from test_experiments import compose_train

OLD_RUN = Path(__file__).parent / "data" / "run_bc51d88"  # `snnexp train trainer.epochs=1` at bc51d88 (unfused)


def spec_net(spec, neuron=PLIF, norm=BatchNormOverTime, shape=(2, 8, 8)):
    torch.manual_seed(0)
    return SpecNet(spec, shape, 10, neuron, norm)


def kinds(model):
    return [m.extra_repr().split(":")[0] if isinstance(m, FusedBlock) else type(m).__name__ for m in model]


@pytest.mark.parametrize("spec, neuron, norm, expected", [
    ("c4k3-BN-SN-MPk2s2-FC10-SN", PLIF, BatchNormOverTime,
     ["SeqToANN", "BN-SN-MP", "Joined", "Joined", "SeqFlatten", "SeqToANN", "PLIF"]),
    ("c4k3-BN-SN-FC10-SN", LIF, BatchNormOverTime, ["SeqToANN", "BN-SN", "Joined", "SeqFlatten", "SeqToANN", "LIF"]),
    ("c4k3-BN-SN-MPk2s2-FC10-SN", LIF, NoNorm,  # norm=none: the neuron and the pool still join
     ["SeqToANN", "NoNorm", "SN-MP", "Joined", "SeqFlatten", "SeqToANN", "LIF"]),
    ("c4k3-BN-SN-APk2s2-FC10-SN", PLIF, BatchNormOverTime,  # average pooling stays apart
     ["SeqToANN", "BN-SN", "Joined", "SeqToANN", "SeqFlatten", "SeqToANN", "PLIF"]),
    ("c4k3-BN-SN-MPk2s2-FC10-SN", partial(PLIF, backend="reference"), BatchNormOverTime,  # no kernel: nothing
     ["SeqToANN", "BatchNormOverTime", "PLIF", "SeqToANN", "SeqFlatten", "SeqToANN", "PLIF"]),
    ("c4k3-BN-SN-MPk2s2-FC10-SN", ALIF, BatchNormOverTime,  # ALIF has no fused kernel
     ["SeqToANN", "BatchNormOverTime", "ALIF", "SeqToANN", "SeqFlatten", "SeqToANN", "ALIF"]),
])
def test_what_the_pass_fuses(spec, neuron, norm, expected):
    assert kinds(fuse_blocks(spec_net(spec, neuron, norm))) == expected


def test_the_network_computes_the_same_and_keeps_its_state_dict_keys():
    plain = spec_net("{c4k3-BN-SN-MPk2s2}*2-FC16-BN-SN-FC10-SN").double()
    fused = fuse_blocks(copy.deepcopy(plain))
    assert sum(isinstance(m, FusedBlock) for m in fused) == 3
    assert list(fused.state_dict()) == list(plain.state_dict())  # '2.weight', not '1.norm.weight'
    x = (torch.rand(4, 3, 2, 8, 8, dtype=torch.float64) < 0.4).double()
    assert torch.equal(fused(x), plain(x))
    plain.load_state_dict(fused.state_dict())  # strict: either way
    fused.load_state_dict(plain.state_dict())
    assert original_name(fused, "5.neuron.w") == "6.w" and original_name(fused, "5.pool") == "7"
    assert fuse_blocks(fused) is fused and list(fused.state_dict()) == list(plain.state_dict())  # a second pass


def test_a_model_that_names_no_layer_runs_is_left_as_it_is():
    model = nn.Sequential(BatchNormOverTime(4), PLIF())
    fuse_blocks(model)
    assert [type(m) for m in model] == [BatchNormOverTime, PLIF] and list(model.state_dict())[0] == "0.weight"


def sew_resnet():
    torch.manual_seed(0)
    return SpikingResNet(18, (3, 16, 16), 10, PLIF, BatchNormOverTime, "add", width=4).double()


def test_the_optimizer_state_of_an_unfused_run_fits_the_fused_network():
    """A SEW block's last BN joins the block's own neuron, whose PLIF w comes after the shortcut's weights in the
    unfused network: fusion.parameters gives the unfused order, so Adam's state (kept by position) from a run
    without fusion continues in the fused network as it would have in the plain one."""
    plain = sew_resnet()
    fused = fuse_blocks(copy.deepcopy(plain))
    assert any(isinstance(m, Joined) and m.into.endswith("body.4") for m in fused.modules())
    assert [original_name(fused, n) for n, p in fused.named_parameters()] != [n for n, _ in plain.named_parameters()]
    named = dict(fused.named_parameters())
    names = {id(p): original_name(fused, n) for n, p in named.items()}
    assert [names[id(p)] for p in fusion.parameters(fused)] == [n for n, _ in plain.named_parameters()]

    x = torch.rand(2, 2, 3, 16, 16, dtype=torch.float64) * 3
    opt = torch.optim.Adam(plain.parameters(), lr=0.05)
    plain(x).sum().backward()
    opt.step()
    fused.load_state_dict(plain.state_dict())
    fused_opt = torch.optim.Adam(fusion.parameters(fused), lr=0.05)
    fused_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: not the same tensors
    for model, optimizer in ((plain, opt), (fused, fused_opt)):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    fused_state = fused.state_dict()
    for key, a in plain.state_dict().items():
        torch.testing.assert_close(a, fused_state[key], rtol=1e-9, atol=1e-12, msg=key)


def test_the_summary_shows_the_fused_blocks_and_join_layers_false_leaves_them_out(tmp_path):
    out = run_snnexp("train", "trainer.epochs=1", "trainer.max_steps=1", "trainer.progress=false",
                     "trainer.print_network=true", "hydra.run.dir=run", cwd=tmp_path)
    log = out.stdout + out.stderr
    assert "FusedBlock(\n    BN-SN-MP: one op on the CPU kernels" in log and "(6): Joined(into 5)" in log
    run = build_run(compose_train("trainer.join_layers=false"), torch.device("cpu"))
    assert not any(isinstance(m, (FusedBlock, Joined)) for m in run.model.modules())


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    return run


def test_a_run_folder_written_before_fusion_evals_to_its_own_numbers(old_run):
    """The weights land where they were: eval's test pass (fused) gives the old run's own spike counts and loss."""
    recorded = json.loads((old_run / "metrics.json").read_text())
    metrics = evaluate_checkpoint(old_run / "checkpoints" / "last.pt", "cpu")
    assert metrics["layer_spikes_per_sample"] == recorded["layer_spikes_per_sample"]
    assert recorded["layer_spikes_per_sample"]["02_PLIF"] > 10  # a test that can fail: the layer fires
    assert metrics["test_loss"] == pytest.approx(recorded["test_loss"], rel=1e-6)


def test_a_run_folder_written_before_fusion_exports_and_resumes_as_an_uninterrupted_run(old_run, tmp_path):
    """Its second epoch trains as an uninterrupted run's does: the same weights, order and updates."""
    assert "NIR graph" in run_snnexp("export", f"checkpoint={old_run / 'checkpoints' / 'last.pt'}", "out=net.nir",
                                     "hydra.run.dir=x", cwd=tmp_path).stdout
    run_snnexp("train", f"resume={old_run}", "trainer.epochs=2", cwd=tmp_path)
    run_snnexp("train", "trainer.epochs=2", "trainer.progress=false", "hydra.run.dir=whole", cwd=tmp_path)
    resumed, whole = (json.loads(p.read_text()) for p in (old_run / "metrics.json", tmp_path / "whole/metrics.json"))
    assert resumed["epoch"] == whole["epoch"] == 2
    # training sees the same weights, batches and batch statistics; the test pass differs by BN's running
    # statistics, which the first epoch now averages cumulatively (train/epoch.py) where bc51d88's did not
    for key in ("train_loss", "train_acc", "step"):
        assert resumed[key] == whole[key], key
