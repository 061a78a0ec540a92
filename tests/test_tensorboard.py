"""What a run writes for TensorBoard, read back from its event files as TensorBoard reads them: runs that differ
only in their neuron share every chart (issue 31: LIF against PLIF), and the CUSTOM SCALARS tab opens on the
result."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from conftest import run_snnexp

SHORT = ["trainer.epochs=1", "trainer.max_steps=2", "trainer.progress=false"]


def tags_of(run):
    events = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def lif_and_plif(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("runs")
    for neuron in ("lif", "plif"):
        run_snnexp("train", f"neuron={neuron}", *SHORT, f"hydra.run.dir={neuron}", cwd=cwd)
    return tags_of(cwd / "lif"), tags_of(cwd / "plif")


def test_lif_and_plif_runs_write_the_same_tags(lif_and_plif):
    """The same place in the network has the same tag whatever the neuron: firing rate, tau (a flat line for LIF),
    gradient norm (over each layer's parameters: PLIF's w counts with its conv), raster and histogram."""
    lif, plif = (events.Tags() for events in lif_and_plif)
    for kind in ("scalars", "images", "histograms"):
        assert set(lif[kind]) == set(plif[kind]), kind
    layers = {f"layer{k}" for k in (1, 2, 3)}  # the default convnet: two conv layers and the FC layer
    for what in ("firing_rate", "tau", "grad_norm"):
        assert {t.split("/", 1)[1] for t in lif["scalars"] if t.startswith(what + "/")} == layers, what
    assert not [t for t in lif["scalars"] if "LIF" in t or ".module" in t]  # no class names, no module paths


def test_tau_is_the_neurons_own(lif_and_plif):
    lif, plif = lif_and_plif
    assert [s.value for s in lif.Scalars("tau/layer1")] == [2.0]  # LIF's fixed tau (conf/neuron/lif.yaml)
    assert plif.Scalars("tau/layer1")[0].value == pytest.approx(2.0, abs=0.05)  # PLIF's, learned from tau0 = 2


def test_the_custom_scalars_tab_opens_on_accuracy(lif_and_plif):
    lif, _ = lif_and_plif
    tags = lif.PluginTagToContent("custom_scalars")  # the layout is the value of the plugin's one tag
    layout = layout_pb2.Layout()
    layout.ParseFromString(lif.Tensors(next(iter(tags))).pop().tensor_proto.string_val[0])
    titles = [category.title for category in layout.category]
    assert titles == ["1 accuracy", "2 loss", "3 firing rate", "4 speed"]
    assert list(layout.category[0].chart[0].multiline.tag) == ["train/acc", "test/acc", "test/best_acc",
                                                                "paper/test_acc"]


def test_the_training_loss_is_logged_at_every_step(tmp_path):
    """train/loss_step in the run's steps/ sub-run: a point per optimizer step, numbered 1..N, whose mean (the
    batches are all full here: 64 of the digits' 1,437 training samples, 22 full batches) is the epoch's train/loss."""
    # a low threshold: the output layer fires from the first step (until it does, the rate loss is flat)
    run_snnexp("train", "neuron.v_threshold=0.2", "trainer.epochs=1", "trainer.max_steps=5",
               "trainer.progress=false", "hydra.run.dir=r", cwd=tmp_path)
    steps = tags_of(tmp_path / "r" / "steps").Scalars("train/loss_step")
    epoch = tags_of(tmp_path / "r").Scalars("train/loss")
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert sum(s.value for s in steps) / 5 == pytest.approx(epoch[0].value, rel=1e-5)
    assert len({s.value for s in steps}) > 1  # a curve, not the epoch's mean repeated


def test_the_mean_firing_rate_is_the_mean_over_layers(lif_and_plif):
    """activity/firing_rate, HPARAMS' one number for the network's activity: the mean of the per-layer rates."""
    lif, _ = lif_and_plif
    layers = [lif.Scalars(t)[0].value for t in lif.Tags()["scalars"] if t.startswith("firing_rate/layer")]
    assert len(layers) == 3 and lif.Scalars("activity/firing_rate")[0].value == pytest.approx(sum(layers) / 3)
