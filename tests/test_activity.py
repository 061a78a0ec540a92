"""What a test pass measures of the network's activity (report/activity.py): spike counts, per-neuron rates, synaptic
operations (effective ACs and MACs, dense), the fixed batch's raster and confusion matrix, and what a run writes of
them to metrics.json and TensorBoard. The expected numbers are worked out by hand or by brute force, never by the
code under test; tests/test_neurobench.py checks them against the neurobench package."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import run_snnexp
from snnexp.cli import conf_dir
from snnexp.nn.layers import SeqToANN
from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import IF
from snnexp.report.activity import Activity, conv_reach, evenly_spaced, spiking_layers
from snnexp.report.metrics import COST_METRICS
from snnexp.report.tensorboard import confusion_image, confusion_matrix_cells, raster_image
from snnexp.train.build import build_run, make_loader
from snnexp.train.evaluate import evaluate, evaluate_checkpoint

T = 4


def tiny_net():
    """Linear(2, 3) -> IF (threshold 1, hard reset to 0) -> Linear(3, 4), no biases.

    With input x = [1, 1] the three neurons get constant currents 1.5, 0.6, 0.6 and spike at steps
    {0, 1, 2, 3}, {1, 3}, {1, 3}; with x = [0, 1] they get 0, 0.6, 0.3 and spike at {}, {1, 3}, {3}."""
    first = nn.Linear(2, 3, bias=False)
    second = nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.5, 0.0], [0.0, 0.6], [0.3, 0.3]]))
        second.weight.fill_(0.25)
    return nn.Sequential(SeqToANN(first), IF(v_threshold=1.0, v_reset=0.0), SeqToANN(second)).eval()


TINY_X = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # two samples
TINY_RASTER_0 = [[1, 1, 1, 1], [0, 1, 0, 1], [0, 1, 0, 1]]  # sample 0: neurons x steps
# spikes per neuron over both samples: 4 + 0, 2 + 2, 2 + 1
TINY_COUNTS = [4, 4, 3]


def run_tiny(batches=1, x=TINY_X):
    model = tiny_net()
    x_seq = x.unsqueeze(0).expand(T, *x.shape)  # direct coding: the same input at every step
    with torch.no_grad(), Activity(model, spiking_layers(model)) as activity:
        for _ in range(batches):
            out = model(x_seq)
            activity.batch(out.mean(0), torch.tensor([0, 1]))
    return activity.summary(), model, out


def test_spike_counts_rates_and_operations_of_a_known_spike_pattern():
    s, _, _ = run_tiny()
    assert s.layer_spikes_per_sample == {"01_IF": pytest.approx(11 / 2)}
    assert s.spikes_per_sample == pytest.approx(5.5)
    # per neuron: count / (T * samples)
    np.testing.assert_allclose(s.neuron_rates["01_IF"], np.array(TINY_COUNTS) / (T * 2))
    assert s.firing_rate["01_IF"] == pytest.approx(11 / (T * 2 * 3))
    assert s.activation_sparsity == pytest.approx(1 - 11 / (T * 2 * 3))
    # the first Linear's input is 0/1, so it does ACs: each input column has 2 non-zero weights (the zeros are
    # pruned synapses, not counted); sample 0 drives 2 + 2, sample 1 drives 2, at each of the 4 steps
    # the second Linear: every spike drives its 4 synapses
    assert s.layer_acs_per_sample == {"00_Linear": pytest.approx((4 + 2) * T / 2),
                                         "02_Linear": pytest.approx(11 * 4 / 2)}
    assert s.layer_macs_per_sample == {"00_Linear": 0, "02_Linear": 0}
    assert s.effective_acs_per_sample == pytest.approx(12 + 22) and s.effective_macs_per_sample == 0
    # dense: every synapse at every step, zero weights included: T x (2 x 3 + 3 x 4)
    assert s.dense_ops_per_sample == pytest.approx(T * (2 * 3 + 3 * 4))
    np.testing.assert_array_equal(s.raster["01_IF"], TINY_RASTER_0)


def test_an_analog_input_does_macs():
    s, _, _ = run_tiny(x=torch.tensor([[0.5, 1.0], [0.0, 1.0]]))  # the same non-zero pattern, one value not 0/1
    assert s.layer_macs_per_sample["00_Linear"] == pytest.approx((4 + 2) * T / 2)
    assert s.layer_acs_per_sample["00_Linear"] == 0
    assert s.layer_macs_per_sample["02_Linear"] == 0  # spikes in: ACs
    assert s.effective_macs_per_sample == pytest.approx(12)


def test_a_layer_run_once_for_a_repeated_input_counts_its_t_steps():
    """Direct coding: SpecNet runs its first layers once on the repeated input (snnexp.nn.neurons.repeated); the
    counts are those of the T calls on a materialised copy."""
    torch.manual_seed(0)
    net = SpecNet("c3k3s1-SN-FC4-SN", input_shape=(1, 5, 5), num_outputs=4, neuron=lambda: IF(v_threshold=0.3),
                  norm=None).eval()
    x = torch.rand(2, 1, 5, 5)
    summaries = []
    for x_seq in (x.unsqueeze(0).expand(T, *x.shape), x.unsqueeze(0).repeat(T, 1, 1, 1, 1)):
        with torch.no_grad(), Activity(net, spiking_layers(net)) as activity:
            activity.batch(net(x_seq).mean(0), torch.zeros(2, dtype=torch.long))
        summaries.append(activity.summary())
    repeated, copied = summaries
    assert copied.layer_macs_per_sample["00_Conv2d"] > 0 and copied.effective_acs_per_sample > 0
    for key in ("layer_acs_per_sample", "layer_macs_per_sample", "dense_ops_per_sample", "spikes_per_sample"):
        assert getattr(repeated, key) == getattr(copied, key)
    conv = net[0].module  # every pixel is non-zero: all taps of all 3 x 3 x 3 weights, at T steps
    assert copied.layer_macs_per_sample["00_Conv2d"] == T * conv_reach(conv, (1, 5, 5)).sum().item()


def test_sums_over_batches_and_the_fixed_batch_is_the_first():
    s, _, _ = run_tiny(batches=3)
    assert s.spikes_per_sample == pytest.approx(5.5)  # the same batch 3 times: same per-sample numbers
    np.testing.assert_allclose(s.neuron_rates["01_IF"], np.array(TINY_COUNTS) / (T * 2))
    assert s.confusion.sum() == 2  # only the first batch


def test_hooks_change_nothing_and_are_removed():
    model = tiny_net()
    x_seq = torch.rand(T, 5, 2)
    with torch.no_grad():
        plain = model(x_seq)
        with Activity(model, spiking_layers(model)) as activity:
            hooked = model(x_seq)
            activity.batch(hooked.mean(0), torch.zeros(5, dtype=torch.long))
        after = model(x_seq)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_hooks_are_removed_when_the_pass_fails():
    model = tiny_net()
    with pytest.raises(RuntimeError):
        with Activity(model, spiking_layers(model)):
            model(torch.rand(T, 5, 7))  # wrong feature count
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def brute_force_conv_sops(x, conv):
    """Every spike, every output position and kernel tap it enters: out_channels / groups synapses each."""
    n, c, h, w = x.shape
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_synapse = conv.out_channels // conv.groups
    total = 0
    for b, ci, i, j in zip(*np.nonzero(x.numpy())):
        for oi, oj, ki, kj in itertools.product(range(ho), range(wo), range(kh), range(kw)):
            if oi * sh - ph + ki * dh == i and oj * sw - pw + kj * dw == j:
                total += per_synapse
    return total


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), groups=2),
    dict(in_channels=3, out_channels=5, kernel_size=5, stride=3, padding=2),
])
def test_conv_sops_match_a_brute_force_count(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs, bias=False)
    model = nn.Sequential(SeqToANN(conv)).eval()
    B = 3
    x_seq = (torch.rand(T, B, kwargs["in_channels"], 7, 6) < 0.3).float()
    with torch.no_grad(), Activity(model, {}) as activity:
        out = model(x_seq)
        activity.batch(out.flatten(2)[0], torch.zeros(B, dtype=torch.long))
    expected = brute_force_conv_sops(x_seq.flatten(0, 1), conv)
    assert expected > 0
    s = activity.summary()
    assert s.layer_acs_per_sample == {"00_Conv2d": pytest.approx(expected / B)}
    # dense: the same count with every input entry non-zero
    assert s.dense_ops_per_sample == pytest.approx(brute_force_conv_sops(torch.ones_like(x_seq[:, 0]), conv))
    # the same as the design's definition: the op with all-ones weights on (input != 0), summed
    ones = nn.functional.conv2d(x_seq.flatten(0, 1), torch.ones_like(conv.weight), None, conv.stride, conv.padding,
                                conv.dilation, conv.groups).sum().item()
    assert ones == expected


def test_conv_reach_counts_the_synapses_out_of_each_input_position():
    conv = nn.Conv2d(1, 2, 3, stride=1, padding=1, bias=False)
    reach = conv_reach(conv, (1, 4, 4))[0]
    # a corner pixel is in 4 of the 3x3 windows (positions 0, 1 along each axis), an edge pixel in 6, an inner one
    # in 9; each window position feeds 2 output channels
    assert reach[0, 0] == 2 * 4 and reach[0, 1] == 2 * 6 and reach[1, 1] == 2 * 9


def test_pruned_synapses_are_not_counted():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.weight[1] = 0  # output channel 1 pruned
        conv.weight[2, 0] = 0  # and channel 0's synapses into output channel 2
    model = nn.Sequential(SeqToANN(conv)).eval()
    x_seq = (torch.rand(T, 2, 2, 6, 6) < 0.3).float()
    with torch.no_grad(), Activity(model, {}) as activity:
        activity.batch(model(x_seq).flatten(2)[0], torch.zeros(2, dtype=torch.long))
    # brute force per output channel: channel 0 sees both input channels, channel 2 input channel 1 alone
    single = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    x = x_seq.flatten(0, 1)
    expected = brute_force_conv_sops(x[:, :1], single) + 2 * brute_force_conv_sops(x[:, 1:], single)
    s = activity.summary()
    assert s.layer_acs_per_sample["00_Conv2d"] == pytest.approx(expected / 2)
    assert s.dense_ops_per_sample == pytest.approx(3 * brute_force_conv_sops(torch.ones_like(x), single) / 2)


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["trainer.progress=false", *overrides])


def eval_fc(encoder):
    """The single-layer network (Flatten, Linear(64, 10), neuron) on the digits test set, untrained."""
    cfg = compose_train("model=fc", f"encoder={encoder}", "trainer.T=4", "trainer.batch_size=128",
                        "trainer.device=cpu")
    run = build_run(cfg, torch.device("cpu"))
    return run, evaluate(run, make_loader(run.splits.test, cfg, train=False))


def test_direct_coding_makes_the_first_layer_do_macs_and_spike_codings_acs():
    run, direct = eval_fc("direct")
    images = torch.stack([x for x, _ in run.splits.test])
    # the analog image at every step: each non-zero pixel into 10 synapses, at 4 steps, as MACs
    nonzero_pixels = (images != 0).sum((1, 2, 3)).double().mean().item()
    assert direct.layer_macs_per_sample == {"01_Linear": pytest.approx(nonzero_pixels * 4 * 10)}
    assert direct.layer_acs_per_sample == {"01_Linear": 0}
    # latency coding with threshold 0: every one of the 64 pixels spikes exactly once, into 10 synapses
    _, latency = eval_fc("latency")
    assert latency.layer_acs_per_sample == {"01_Linear": pytest.approx(64 * 10)}
    assert latency.effective_macs_per_sample == 0
    # Poisson: a pixel of intensity p spikes about p * T times
    _, poisson = eval_fc("poisson")
    mean_intensity_sum = images.sum((1, 2, 3)).mean().item()
    assert poisson.layer_acs_per_sample["01_Linear"] == pytest.approx(mean_intensity_sum * 4 * 10, rel=0.03)
    for s in (direct, latency, poisson):  # every synapse at every step
        assert s.dense_ops_per_sample == 4 * 64 * 10


def test_confusion_matrix_of_a_known_batch():
    model = tiny_net()
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.0, 0.2, 0.8], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 1, 0, 2, 2])
    activity = Activity(model, {})
    activity.batch(scores, labels)
    activity.batch(scores, torch.tensor([1, 1, 1, 1, 1]))  # not the fixed batch: not counted
    # rows true, columns predicted: true 0 -> 0 and 1; true 1 -> 1; true 2 -> 2 and 0
    np.testing.assert_array_equal(activity.summary().confusion, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert activity.samples == 10


def test_confusion_image_is_row_normalised_grayscale():
    img = confusion_matrix_cells(np.array([[2, 1, 1], [0, 0, 0], [0, 0, 5]]), size=30)
    assert img.shape == (30, 30) and img.dtype == np.uint8  # 10 x 10 pixel cells
    cells = img[::10, ::10]
    # the darker the larger the share of its row: 1/2 -> 128 (rounded), 1/4 -> 191, 1 -> 0, an empty row white
    np.testing.assert_array_equal(cells, [[128, 191, 191], [255, 255, 255], [255, 255, 0]])
    assert (img[:10, :10] == 128).all()


def test_the_confusion_image_names_its_classes_on_both_axes():
    """Class i's index beside row i (the true class) and above column i (the predicted one): the label left of a row
    is the same picture as the one above the column of that class, and differs from the other classes' labels."""
    cm = np.eye(12, dtype=int)
    img = confusion_image(cm, size=240)  # 20 px cells: digits drawn at twice the font's 3 x 5 pixels
    cells = confusion_matrix_cells(cm, size=240)
    top, left = img.shape[0] - cells.shape[0], img.shape[1] - cells.shape[1]
    np.testing.assert_array_equal(img[top:, left:], cells)
    row_labels = [img[top + 20 * i:top + 20 * (i + 1), :left] for i in range(12)]
    col_labels = [img[:top, left + 20 * i:left + 20 * (i + 1)] for i in range(12)]
    for i in range(12):
        ink_row, ink_col = row_labels[i] < 128, col_labels[i] < 128
        assert ink_row.any() and ink_col.any()
        assert ink_row.sum() == ink_col.sum()  # the same digits
    assert len({lab.tobytes() for lab in row_labels}) == 12  # every class its own label
    assert (row_labels[10] < 128).sum() > (row_labels[1] < 128).sum()  # '10' has two digits


def test_raster_image_and_neuron_subset():
    img = raster_image(np.array(TINY_RASTER_0, dtype=np.uint8), height=12, width=8)
    assert img.shape == (12, 8)  # cells 4 x 2
    np.testing.assert_array_equal(img[::4, ::2] == 0, np.array(TINY_RASTER_0, dtype=bool))  # spikes black
    assert set(np.unique(img)) == {0, 255}
    idx = evenly_spaced(1000, 256)
    assert len(idx) == 256 and idx[0] == 0 and idx[-1] < 1000 and (idx.diff() >= 3).all()
    assert evenly_spaced(3, 256).tolist() == [0, 1, 2]


def test_raster_keeps_at_most_256_evenly_spaced_neurons():
    model = nn.Sequential(IF()).eval()
    x_seq = torch.zeros(T, 2, 1000)
    x_seq[:, 0, ::4] = 2.0  # sample 0: neurons 0, 4, 8, ... spike at every step
    with torch.no_grad(), Activity(model, spiking_layers(model)) as activity:
        activity.batch(model(x_seq).mean(0), torch.zeros(2, dtype=torch.long))
    raster = activity.summary().raster["00_IF"]
    kept = torch.arange(256) * 1000 // 256
    assert raster.shape == (256, T)
    np.testing.assert_array_equal(raster[:, 0], (kept % 4 == 0).numpy())


def _ddp_worker(rank, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = tiny_net()
        x = TINY_X[rank:rank + 1]  # rank 0 the first sample, rank 1 the second
        with torch.no_grad(), Activity(model, spiking_layers(model)) as activity:
            out = model(x.unsqueeze(0).expand(T, *x.shape))
            activity.batch(out.mean(0), torch.tensor([rank]))
        activity.all_reduce()
        s = activity.summary()
        torch.save({"samples": activity.samples, "spikes": s.spikes_per_sample, "acs": s.effective_acs_per_sample,
                    "dense": s.dense_ops_per_sample, "rates": s.neuron_rates["01_IF"]}, f"{out_dir}/{rank}.pt")
        torch.distributed.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        torch.distributed.destroy_process_group()


def test_data_parallel_sums_over_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        r = torch.load(tmp_path / f"{rank}.pt", weights_only=False)
        # the two samples together, as in one process: 11 spikes, 68 ACs, 144 dense operations
        assert r["samples"] == 2 and r["spikes"] == pytest.approx(5.5) and r["acs"] == pytest.approx(34.0)
        assert r["dense"] == pytest.approx(72.0)
        np.testing.assert_allclose(r["rates"], np.array(TINY_COUNTS) / (T * 2))


def test_run_logs_activity_to_metrics_and_tensorboard(tmp_path):
    run_snnexp("train", "trainer.epochs=2", "trainer.progress=false", "hydra.run.dir=run",
               cwd=tmp_path)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("spikes_per_sample", "layer_spikes_per_sample", *COST_METRICS, "layer_acs_per_sample",
                "layer_macs_per_sample"):
        assert key in metrics
    assert metrics["spikes_per_sample"] > 0 and metrics["effective_acs_per_sample"] > 0
    assert metrics["spikes_per_sample"] == pytest.approx(sum(metrics["layer_spikes_per_sample"].values()))
    assert metrics["effective_acs_per_sample"] == pytest.approx(sum(metrics["layer_acs_per_sample"].values()))
    # the default convnet on 8x8 digits, direct coding: the first conv sees the analog image (MACs); the second conv
    # and the FC see spikes (ACs)
    assert set(metrics["layer_acs_per_sample"]) == {"00_Conv2d", "04_Conv2d", "09_Linear"}
    assert metrics["layer_acs_per_sample"]["00_Conv2d"] == 0 and metrics["layer_macs_per_sample"]["00_Conv2d"] > 0
    assert metrics["effective_macs_per_sample"] == metrics["layer_macs_per_sample"]["00_Conv2d"]
    # the energy of the 45 nm default: 0.9 pJ per AC, 4.6 pJ per MAC
    assert metrics["energy_per_sample_pj"] == pytest.approx(
        0.9 * metrics["effective_acs_per_sample"] + 4.6 * metrics["effective_macs_per_sample"])
    # the first PLIF layer has 32 x 8 x 8 neurons: spikes per sample = rate x T x neurons
    assert metrics["layer_spikes_per_sample"]["02_PLIF"] == pytest.approx(
        metrics["firing_rate"]["02_PLIF"] * 4 * 32 * 8 * 8)
    assert "raster" not in metrics and "neuron_rates" not in metrics and "confusion" not in metrics

    events = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"activity/spikes_per_sample", *COST_METRICS.values()} <= set(tags["scalars"])
    for key, tag in COST_METRICS.items():  # one per epoch, the last the final test pass's
        assert len(events.Scalars(tag)) == 2
        assert events.Scalars(tag)[-1].value == pytest.approx(metrics[key], rel=1e-6)
    plif = ["layer1", "layer2", "layer3"]  # the PLIF layers 02, 06 and 10 of metrics.json, by layer of the spec
    assert set(tags["images"]) == {f"spike_raster/{k}" for k in plif} | {"confusion/test_batch"}
    assert set(tags["histograms"]) == {f"firing_rate_hist/{k}" for k in plif}
    raster = events.Images("spike_raster/layer1")[-1]
    assert raster.height == 256 * 2 and raster.width == 4 * 32  # 256 of 2048 neurons, 4 steps
    confusion = events.Images("confusion/test_batch")
    assert len(confusion) == 2 and confusion[-1].height > 320 and confusion[-1].width > 320  # 32 px cells, labels
    hist = events.Histograms("firing_rate_hist/layer1")[-1].histogram_value
    assert hist.num == 32 * 8 * 8 and 0 <= hist.min <= hist.max <= 1
    assert hist.sum / hist.num == pytest.approx(metrics["firing_rate"]["02_PLIF"], rel=1e-4)

    evaluated = evaluate_checkpoint(run / "checkpoints" / "last.pt", "cpu")  # snnexp eval reports them too
    assert evaluated["spikes_per_sample"] == pytest.approx(metrics["spikes_per_sample"], rel=1e-9)
    for key in COST_METRICS:
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-9)


def _cases():
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(64, 8, 6, 6, generator=g) < 0.2).float()
    halves = spikes * 0.5
    pair = spikes.clone()
    pair[3, 0, 0, 0], pair[5, 0, 0, 0] = 0.5, 0.5  # a column whose sum is still whole: the squares tell
    near_one = spikes.clone()
    near_one[0, 1, 2, 3] = 1 - 2**-24
    tiny = spikes.clone()
    tiny[7, 2, 1, 1] = 1e-30
    signed = spikes - (torch.rand(spikes.shape, generator=g) < 0.1).float()
    return {
        "spikes": spikes,
        "spikes, channels_last": spikes.contiguous(memory_format=torch.channels_last),
        "spikes, expanded over time": spikes[0].unsqueeze(0).expand(5, *spikes.shape[1:]),
        "spikes, float64": spikes.double(),
        "spikes, bfloat16": spikes.bfloat16(),
        "all zero": torch.zeros(4, 3),
        "empty": torch.zeros(0, 3),
        "halves": halves,
        "two halves in a column": pair,
        "one value a rounding below 1": near_one,
        "a tiny value": tiny,
        "-1, 0, 1": signed,
        "counts above 1": spikes * 3,
        "an image": torch.rand(16, 1, 8, 8, generator=g),
        "a NaN": torch.where(spikes == 1, float("nan"), spikes),
        "many columns, few rows (threads split rows)": (torch.rand(40, 70000, generator=g) < 0.2).float(),
    }


@pytest.mark.parametrize("kernel", [True, False], ids=["count_cpu.c", "torch ops"])
@pytest.mark.parametrize("case", list(_cases()))
def test_nonzero_counts_are_the_definitions_for_spikes_and_anything_else(case, kernel, monkeypatch):
    """nonzero_counts against its definition, (x != 0).sum(0) and 'every entry is -1, 0 or 1', on spikes in every
    layout it meets and on inputs that are nearly spikes."""
    from snnexp.ops.fused import prepare_cpu_kernels
    from snnexp.report import activity
    from snnexp.report.activity import nonzero_counts
    prepare_cpu_kernels()
    if not kernel:
        monkeypatch.setattr(activity, "kernels_ready", lambda device_type: False)
    calls = []
    real = activity.cpu.count_nonzero
    monkeypatch.setattr(activity.cpu, "count_nonzero", lambda rows: calls.append(rows.shape) or real(rows))
    x = _cases()[case]
    counts, spikes = nonzero_counts(x)
    assert bool(calls) == (kernel and x.numel() > 0 and x.dtype in (torch.float32, torch.float64)), case
    assert counts.dtype == torch.long and torch.equal(counts, (x != 0).sum(0)), case
    assert spikes == int(((x == 0) | (x.abs() == 1)).all()), case


JOINED_RUNS = {  # the default convnet (conv-BN-PLIF-MP twice) on the digits: each joined block of run_layers
    "direct coding, channels_last (SN-MP, then BN-SN-MP)": ["trainer.batch_size=50"],
    "Poisson, NCHW (BN-SN-MP twice)": ["encoder=poisson", "trainer.channels_last=false", "trainer.batch_size=50"],
    "LIF, no BN (SN-MP), T = 6": ["neuron=lif", "norm=none", "trainer.T=6", "trainer.batch_size=50"],
}


@pytest.mark.parametrize("case", list(JOINED_RUNS))
def test_a_test_pass_on_the_joined_kernels_counts_what_the_layers_apart_count(case, monkeypatch):
    """After the first batch (its raster needs the spikes) the counters take each neuron's spike counts from the
    joined neuron-pool kernel, which never hands the spikes out: every metric equals that of the same pass with
    the layers apart (trainer.join_layers=false), where the hooks see every spike."""
    from snnexp.ops.kernels import cpu
    counted = []
    real = cpu.pool_forward

    def recording(*args, count=False, **kwargs):
        counted.append(count)
        return real(*args, count=count, **kwargs)

    monkeypatch.setattr(cpu, "pool_forward", recording)
    summaries = {}
    for join in ("true", "false"):
        cfg = compose_train(*JOINED_RUNS[case], f"trainer.join_layers={join}")
        torch.manual_seed(0)
        run = build_run(cfg, torch.device("cpu"))
        for p in run.model.parameters():  # weights that make every layer fire: an untrained net is nearly silent
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, 4.0 / p[0].numel() ** 0.5)
        summaries[join] = evaluate(run, make_loader(run.splits.test, cfg, train=False))
    joined, apart = summaries["true"], summaries["false"]
    assert counted.count(True) >= 2 * (len(run.splits.test) // 50 - 1)  # two blocks a batch, after the first
    assert sum(rate > 0.01 for rate in joined.firing_rate.values()) >= 2  # the joined blocks' neurons fire
    for key, value in vars(apart).items():
        if isinstance(value, dict):
            assert value.keys() == getattr(joined, key).keys(), key
            for layer, v in value.items():
                np.testing.assert_array_equal(getattr(joined, key)[layer], v, err_msg=f"{key} {layer}")
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(joined, key), value, err_msg=key)
        elif key != "energy_per_sample_pj" or value:
            assert getattr(joined, key) == value, key


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_joined_kernels_spike_counts_are_the_neurons(channels_last, dtype):
    """lif_max_pool(count=True) against the neuron's own spikes summed over steps and samples, with BN in the
    kernel and direct coding's repeated step, a batch split among threads; a map the windows do not tile is not
    counted (None)."""
    from snnexp.nn.fusion import lif_max_pool
    from snnexp.nn.neurons import PLIF
    from snnexp.nn.norms import BatchNormOverTime
    from snnexp.nn.pooling import MaxPool2d
    from snnexp.ops.normalised import batch_norm
    g = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3 * 40, 6, 10, 12, generator=g, dtype=dtype).contiguous(memory_format=fmt).unflatten(0, (3, 40))
    neuron, pool = PLIF().to(dtype), MaxPool2d(2, 2)
    bn = BatchNormOverTime(6).to(dtype).eval()
    bn.running_mean.uniform_(-0.5, 0.5, generator=g)
    with torch.no_grad():
        y, counts = lif_max_pool(neuron, pool, x, count=True)
        assert torch.equal(counts, neuron(x).sum((0, 1))) and torch.equal(y, lif_max_pool(neuron, pool, x))
        _, counts = lif_max_pool(neuron, pool, x, norm=batch_norm(bn, x, 0), count=True)
        assert torch.equal(counts, neuron(bn(x)).sum((0, 1)))
        step = x[0]
        _, counts = lif_max_pool(neuron, pool, step, steps=5, count=True)
        assert torch.equal(counts, neuron(step.unsqueeze(0).expand(5, *step.shape)).sum((0, 1)))
        assert lif_max_pool(neuron, pool, x[..., :9, :], count=True) is None  # 9 rows: the last one unpooled


# -- the attention's products (snnexp.nn.attention.SpikeProduct) ------------------------------------------------------

def loop_count(lead, ranges, fires):
    """(effective, dense) of a product by its definition: every term, i.e. every index i of the leading dims (time,
    batch, head) and every index tuple j of the product's own dims (those of its output and those it sums over),
    is one operation; it is effective when fires(i, *j), i.e. when all the operands it multiplies are non-zero."""
    effective = dense = 0
    for i in itertools.product(*map(range, lead)):
        for j in itertools.product(*map(range, ranges)):
            dense += 1
            effective += bool(fires(i, *j))
    return effective, dense


def product_cases():
    """Each product of the three attentions, its operands and the definition of its terms: (name, module, operands,
    (effective, dense) by loop_count). Heads of d = 3 channels and L = 5 tokens, lead [T=2, B=2, heads=2]."""
    from snnexp.nn.attention import QKAttention, SpikeDrivenSelfAttention, SpikingSelfAttention
    from snnexp.nn.norms import BatchNormOverTime

    g = torch.Generator().manual_seed(3)
    lead, d, L = (2, 2, 2), 3, 5

    def spikes(*shape):
        return (torch.rand(*lead, *shape, generator=g) < 0.5).float()

    ssa = SpikingSelfAttention(6, 2, IF, BatchNormOverTime)
    sdsa = SpikeDrivenSelfAttention(6, 2, IF, BatchNormOverTime)
    qk = {kind: QKAttention(6, 2, IF, BatchNormOverTime, kind) for kind in ("token", "channel")}
    q, k, v = spikes(d, L), spikes(d, L), spikes(d, L)
    kv = k.transpose(-1, -2).new_zeros(*lead, d, d)  # K^T V by its sums: kv[c, e] = sum over t of K[c, t] V[e, t]
    for i in itertools.product(*map(range, lead)):
        for c, e, t in itertools.product(range(d), range(d), range(L)):
            kv[i][c, e] += k[i][c, t] * v[i][e, t]
    assert kv.max() > 1  # integers: not spikes
    channel_mask, token_mask = spikes(d), spikes(L)
    Q, K, V, KV, CM, TM = (t.numpy() for t in (q, k, v, kv, channel_mask, token_mask))
    return [
        # SSA: K^T V[c, e] = sum_t K[c, t] V[e, t]; then (Q (K^T V))[e, t] = sum_c KV[c, e] Q[c, t]
        ("SSA K^T V", ssa.kv, (k, v), loop_count(lead, (d, d, L), lambda i, c, e, t: K[i][c, t] and V[i][e, t])),
        ("SSA Q (K^T V)", ssa.qkv_product, (kv, q),
         loop_count(lead, (d, d, L), lambda i, c, e, t: KV[i][c, e] and Q[i][c, t])),
        # SDSA: SUM_tokens(K (x) V)[c] = sum_t K[c, t] V[c, t]; the mask (Q (x) M)[c, t] = M[c] Q[c, t]
        ("SDSA sum of K (x) V", sdsa.kv, (k, v), loop_count(lead, (d, L), lambda i, c, t: K[i][c, t] and V[i][c, t])),
        ("SDSA mask", sdsa.mask, (channel_mask, q), loop_count(lead, (d, L), lambda i, c, t: CM[i][c] and Q[i][c, t])),
        # QKTA: A[t] = sum_c Q[c, t], then A[t] K[c, t]; QKCA: A[c] = sum_t Q[c, t], then A[c] K[c, t]
        ("QKTA sum", qk["token"].q_sum, (q,), loop_count(lead, (d, L), lambda i, c, t: Q[i][c, t])),
        ("QKTA mask", qk["token"].mask, (token_mask, k),
         loop_count(lead, (d, L), lambda i, c, t: TM[i][t] and K[i][c, t])),
        ("QKCA sum", qk["channel"].q_sum, (q,), loop_count(lead, (d, L), lambda i, c, t: Q[i][c, t])),
        ("QKCA mask", qk["channel"].mask, (channel_mask, k),
         loop_count(lead, (d, L), lambda i, c, t: CM[i][c] and K[i][c, t])),
    ]


def test_the_attention_products_operations_are_their_terms_by_definition():
    """Every product has a spike operand (Q K^T V's second product: Q, with K^T V integers): accumulates; with no
    spike operand (Q doubled) the same terms are multiply-accumulates."""
    for name, product, operands, (effective, dense) in product_cases():
        assert 0 < effective < dense, name
        assert product.operations(*operands) == (effective, dense, True), name
        not_spikes = [2 * x for x in operands]
        assert product.operations(*not_spikes) == (effective, dense, False), name


def test_a_test_pass_counts_the_attention_products_of_a_spikformer():
    """A tiny Spikformer (8 x 8 input, 16 channels, 2 heads, 4 x 4 tokens): the products' operations, by loop_count
    on the operands they were called with, are in the pass's ACs under each product's name, and in the totals."""
    from functools import partial

    from snnexp.nn.models.transformers import Block, Spikformer
    from snnexp.nn.norms import BatchNormOverTime

    torch.manual_seed(0)
    model = Spikformer((1, 8, 8), 10, partial(IF, v_threshold=0.2), BatchNormOverTime, embed_dim=16, depth=1,
                       heads=2, patch_size=2).eval()
    block = next(i for i, m in enumerate(model) if isinstance(m, Block))
    attention = model[block].attention
    seen = {}

    def keep(part):
        def hook(module, inputs, out):
            seen[part] = [x.clone() for x in inputs]
        return hook

    for part in ("kv", "qkv_product"):
        getattr(attention, part).register_forward_hook(keep(part))
    B = 3
    x_seq = (torch.rand(2, B, 1, 8, 8) < 0.5).float()
    with torch.no_grad(), Activity(model, spiking_layers(model)) as activity:
        activity.batch(model(x_seq).mean(0), torch.zeros(B, dtype=torch.long))
    s = activity.summary()
    k, v = (x.numpy() for x in seen["kv"])
    kv, q = (x.numpy() for x in seen["qkv_product"])
    lead, (d, L) = k.shape[:-2], k.shape[-2:]
    assert (d, L) == (8, 16) and kv.max() > 1
    expected = {
        "kv": loop_count(lead, (d, d, L), lambda i, c, e, t: k[i][c, t] and v[i][e, t]),
        "qkv_product": loop_count(lead, (d, d, L), lambda i, c, e, t: kv[i][c, e] and q[i][c, t]),
    }
    dense = 0
    for part, (effective, all_terms) in expected.items():
        name = f"{block:02d}.attention.{part}_SpikeProduct"
        assert effective > 0
        assert s.layer_acs_per_sample[name] == effective / B and s.layer_macs_per_sample[name] == 0
        dense += all_terms
    assert s.effective_acs_per_sample == pytest.approx(sum(s.layer_acs_per_sample.values()), rel=1e-12)
    assert s.effective_macs_per_sample == pytest.approx(sum(s.layer_macs_per_sample.values()), rel=1e-12)
    weight_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(s.layer_acs_per_sample) == len(weight_layers) + 2
    # dense: the weight layers' synapses at every step and the products' terms
    weights = sum(activity.ops[n][2].item() for n in activity.ops if not n.endswith("_SpikeProduct"))
    assert s.dense_ops_per_sample * B == weights + dense
