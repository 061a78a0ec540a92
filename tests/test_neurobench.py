"""Our NeuroBench set (report/activity.py, report/cost.py) against the neurobench package's own Benchmark [Yik 2025] on
the same network and the same encoded inputs: effective ACs and MACs, dense operations, activation sparsity,
footprint, parameter count and connection sparsity, for direct, Poisson and latency coding, event frames, pruned
layers and a SEW-ResNet; and the wrapper's duties (batch-first data, errors NeuroBench would turn into 0.0).

Tiny untrained networks with IF neurons at a low threshold (so that they spike a lot) and a few test samples: the
counts differ from run to run of the weights, never between the two. Skipped without the optional package
(pip install 'snnexp[neurobench]'; `make` installs it)."""

import json
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from conftest import run_snnexp
from event_writers import make_nmnist
from snnexp.cli import conf_dir
from snnexp.nn.fusion import FusedBlock
from snnexp.nn.neurons import IF
from snnexp.nn.readouts import RateReadout
from snnexp.train.build import build_run, make_loader
from snnexp.train.evaluate import evaluate, neurobench_results

pytest.importorskip("neurobench")

from snnexp.report.neurobench import TimeMajorModel, run_benchmark  # noqa: E402  (needs neurobench)

SPIKY = ["neuron=if", "neuron.v_threshold=0.2", "trainer.T=4", "trainer.batch_size=16", "trainer.device=cpu"]


def ours_and_theirs(*overrides, samples=48, change=None):
    """Our test pass (engine.evaluate) and NeuroBench's Benchmark (engine.neurobench_results) on the same network,
    test batches and input spikes; `change(model)` first (pruning)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer.progress=false", *SPIKY, *overrides])
    torch.manual_seed(0)
    run = build_run(cfg, torch.device("cpu"))
    if change is not None:
        with torch.no_grad():
            change(run.model)
    loader = make_loader(Subset(run.splits.test, range(min(samples, len(run.splits.test)))), cfg)
    return evaluate(run, loader), neurobench_results(run, loader)


def assert_same(ours, theirs):
    """Exact for the integer-valued counts per sample (both divide the same integer sums by the same sample
    count); connection sparsity to NeuroBench's 4 decimals."""
    assert theirs["Effective_ACs"] == ours.effective_acs_per_sample
    assert theirs["Effective_MACs"] == ours.effective_macs_per_sample
    assert theirs["Dense"] == ours.dense_ops_per_sample
    assert theirs["ActivationSparsity"] == pytest.approx(ours.activation_sparsity, abs=1e-12)
    assert theirs["Footprint"] == ours.footprint_bytes
    assert theirs["ParameterCount"] == ours.parameter_count
    assert theirs["ConnectionSparsity"] == round(ours.connection_sparsity, 4)
    assert theirs["ClassificationAccuracy"] == pytest.approx(ours.acc, abs=1e-6)
    assert list(ours.layer_spikes_per_sample.values())[-1] > 0  # spikes reach the output: no trivial zeros


def test_direct_coding_the_first_layer_does_macs():
    ours, theirs = ours_and_theirs("encoder=direct")
    assert_same(ours, theirs)
    assert ours.layer_macs_per_sample["00_Conv2d"] == ours.effective_macs_per_sample > 0
    assert ours.layer_acs_per_sample["00_Conv2d"] == 0 and ours.effective_acs_per_sample > 0


@pytest.mark.parametrize("encoder", ["poisson", "latency"])
def test_spike_coding_is_all_acs(encoder):
    """The network as `snnexp train` builds it, with fused blocks (snnexp.nn.fusion): NeuroBench's hooks on the neurons
    inside them make the blocks run their layers apart, so its counts see every spike."""
    blocks = []
    ours, theirs = ours_and_theirs(f"encoder={encoder}", change=lambda model: blocks.extend(
        m for m in model.modules() if isinstance(m, FusedBlock)))
    assert len(blocks) == 2
    assert_same(ours, theirs)
    assert ours.effective_macs_per_sample == 0 and ours.layer_acs_per_sample["00_Conv2d"] > 0


def test_event_frames(tmp_path):
    """N-MNIST files in the real format, through the real loader: frames of event counts. A batch whose frames
    hold a count above 1 anywhere makes the first layer do MACs, in NeuroBench and here."""
    make_nmnist(tmp_path / "data", per_digit=3)
    ours, theirs = ours_and_theirs("dataset=nmnist", f"dataset.data_dir={tmp_path / 'data'}", "dataset.download=false",
                                   f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.workers=1",
                                   "model.spec=c8k3s2-BN-SN-FC10-SN", "trainer.batch_size=4")
    assert_same(ours, theirs)
    assert ours.layer_acs_per_sample["00_Conv2d"] + ours.layer_macs_per_sample["00_Conv2d"] > 0


def prune(model):
    """Half of the first conv's weights (the smaller ones) and the first 30 rows of the FC layer set to 0."""
    conv, fc = model[0].module, next(m for m in model.modules() if isinstance(m, nn.Linear))
    smaller = torch.zeros(conv.weight.numel(), dtype=torch.bool)
    smaller[conv.weight.abs().flatten().argsort()[:conv.weight.numel() // 2]] = True
    conv.weight[smaller.view(conv.weight.shape)] = 0
    fc.weight[:30] = 0


@pytest.mark.parametrize("encoder", ["direct", "poisson"])
def test_pruned_synapses_are_left_out_as_neurobench_does(encoder):
    ours, theirs = ours_and_theirs(f"encoder={encoder}", change=prune)
    assert_same(ours, theirs)
    dense_ours, _ = ours_and_theirs(f"encoder={encoder}")
    assert ours.dense_ops_per_sample == dense_ours.dense_ops_per_sample  # dense counts every synapse
    # the zeros by hand: conv 32 x 1 x 3 x 3 (144 of 288 set to 0), conv 32 x 32 x 3 x 3, FC 100 x 128 (30 rows)
    total = 288 + 32 * 32 * 9 + 100 * 128
    assert ours.connection_sparsity == pytest.approx((144 + 30 * 128) / total)


@pytest.mark.parametrize("connection", ["add", "iand"])
def test_sew_resnet(connection):
    """SEW-ResNet-18 (narrow) on Poisson spikes: ADD joins spikes into sums of 2, the next layer's input in
    those batches, so it does MACs; IAND's joins stay 0/1, and the average pool is over a 1 x 1 map on 8 x 8
    digits, so all are ACs."""
    ours, theirs = ours_and_theirs("encoder=poisson", "model=resnet18", f"model.connection={connection}",
                                   "model.width=4", samples=32)
    assert_same(ours, theirs)
    if connection == "add":
        assert ours.effective_macs_per_sample > 0
    else:
        assert ours.effective_macs_per_sample == 0


@pytest.mark.parametrize("encoder", ["direct", "poisson"])
def test_recurrent_network(encoder):
    """RFC16 (snnexp.nn.recurrent): NeuroBench hooks its W_in and W_rec like any Linear, once per call (W_rec once per
    step from the second on) and takes the layer as one activation layer; our counts are the same."""
    ours, theirs = ours_and_theirs(f"encoder={encoder}", "model=rsnn", "model.hidden=[16]")
    assert_same(ours, theirs)
    assert ours.layer_acs_per_sample["01.recurrent_Linear"] > 0
    assert ours.layer_spikes_per_sample["01_RecurrentFC"] > 0


def test_the_wrapper_is_batch_first():
    net = nn.Sequential(nn.Linear(3, 2), IF(v_threshold=0.1)).eval()
    x = torch.rand(5, 4, 3)  # [B, T, features]
    out = TimeMajorModel(net)(x)
    assert out.shape == (5, 4, 2)
    torch.testing.assert_close(out, net(x.transpose(0, 1)).transpose(0, 1))


class RNNNet(nn.Module):
    """A layer NeuroBench's SynapticOperations cannot count (it raises on nn.RNN)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.sn = nn.RNN(3, 10), IF(v_threshold=0.1)

    def forward(self, x_seq):
        return self.sn(self.rnn(x_seq)[0])


def test_a_failing_neurobench_metric_is_an_error_not_a_zero():
    loader = DataLoader(TensorDataset(torch.rand(8, 4, 3), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(RuntimeError, match="NeuroBench's metrics failed on this network: SynapticOperations: "):
        run_benchmark(RNNNet(), loader, [], RateReadout(), torch.device("cpu"))


def test_eval_prints_neurobench_results_by_their_names(tmp_path):
    run_snnexp("train", "model=fc", "encoder=poisson", "trainer.epochs=1", "trainer.max_steps=3",
               "trainer.progress=false", "hydra.run.dir=run", cwd=tmp_path)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    proc = run_snnexp("eval", "checkpoint=run/checkpoints/last.pt", "neurobench=true", "hydra.run.dir=ev",
                      cwd=tmp_path)
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    nb = evaluated["neurobench"]
    for name in ("Footprint", "ConnectionSparsity", "ParameterCount", "ClassificationAccuracy", "ActivationSparsity",
                 "Effective_MACs", "Effective_ACs", "Dense"):
        assert f"\n  {name} {nb[name]}\n" in proc.stdout + "\n"
    assert nb["Effective_ACs"] == evaluated["effective_acs_per_sample"] == trained["effective_acs_per_sample"] > 0
    assert nb["Dense"] == evaluated["dense_ops_per_sample"]


def test_eval_without_the_package_says_how_to_install_it(tmp_path):
    fake = tmp_path / "site" / "neurobench"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named neurobench')\n")
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    proc = run_snnexp("eval", "checkpoint=any.pt", "neurobench=true", cwd=tmp_path, env={"PYTHONPATH": path},
                      check=False, process=True)  # a fresh import that finds the broken package first
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "snnexp: error: neurobench=true needs the neurobench package, which cannot be imported (No module named "
        "neurobench): install it with pip install 'snnexp[neurobench]' (or pip install neurobench)")


@pytest.mark.parametrize("model, grid, products, terms", [
    # 2 heads; SSA: K^T V and Q (K^T V), each d x d x L terms per head and step; SDSA: SUM_tokens(K (x) V) and the
    # mask, each d x L; QK token attention: SUM_channels(Q) and the mask, each d x L. Spikformer and SDT: d = 8,
    # L = 4 x 4; QKFormer: a QK stage of 8 channels (d = 4) on 8 x 8 tokens, then SSA on 16 (d = 8) on 4 x 4
    ("spikformer", "model.patch_size=2", 2, 2 * (2 * 8 * 8 * 16)),
    ("spike_driven_transformer", "model.pooling='0001'", 2, 2 * (2 * 8 * 16)),
    ("qkformer", "model.stem=cifar", 4, 2 * (2 * 4 * 64) + 2 * (2 * 8 * 8 * 16)),
], ids=["spikformer", "spike_driven_transformer", "qkformer"])
def test_a_transformer_neurobench_counts_without_the_attention_products(model, grid, products, terms):
    """A tiny transformer (8 x 8 digits, 16 channels, 2 heads): NeuroBench hooks its Linear and Conv layers only, as
    ours are counted, and does not see the attention's products of two signals (SpikeProduct), which our counts
    add: ours = NeuroBench's + the products', and the products' dense terms are those of their definition, T x
    `terms` per sample."""
    depth = "model.depths=[1,1]" if model == "qkformer" else "model.depth=1"
    ours, theirs = ours_and_theirs(f"model={model}", "model.embed_dim=16", "model.heads=2", depth, grid,
                                   "model.mlp_ratio=2", samples=16)
    names = [k for k in ours.layer_acs_per_sample if k.endswith("_SpikeProduct")]
    assert len(names) == products
    acs = sum(ours.layer_acs_per_sample[k] for k in names)
    assert acs > 0 and all(ours.layer_macs_per_sample[k] == 0 for k in names)  # every product has spikes in it
    weights = {k: v for k, v in ours.layer_acs_per_sample.items() if k not in names}
    assert theirs["Effective_ACs"] == pytest.approx(sum(weights.values()), rel=1e-12)
    assert theirs["Effective_ACs"] + acs == pytest.approx(ours.effective_acs_per_sample, rel=1e-12)
    assert theirs["Effective_MACs"] == ours.effective_macs_per_sample > 0  # the first conv, on the image
    assert theirs["Dense"] + 4 * terms == ours.dense_ops_per_sample  # T = 4
    assert theirs["ActivationSparsity"] == pytest.approx(ours.activation_sparsity, abs=1e-12)
    assert theirs["Footprint"] == ours.footprint_bytes and theirs["ParameterCount"] == ours.parameter_count
    assert theirs["ClassificationAccuracy"] == pytest.approx(ours.acc, abs=1e-6)
    assert list(ours.layer_spikes_per_sample.values())[-1] > 0
