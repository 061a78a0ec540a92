"""What a run writes for TensorBoard, read back from its event files as TensorBoard reads them: runs that differ
only in their neuron share every chart (issue 31: LIF against PLIF), and the CUSTOM SCALARS tab opens on the
result."""

import errno
import json
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from conftest import run_snnexp
from snnexp.report.tensorboard import RunLogger

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


# -- the HPARAMS table (report/hparams.py): one experiment summary per log folder, the result first -----------------

def hparams_plugin_view(logdir):
    """What TensorBoard's hparams plugin reads under `logdir` (`tensorboard --logdir`): the content of its tags by
    run, and the experiment it serves the HPARAMS tab (backend_context.Context, the plugin's own code)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    plugin = backend_context.Context(base_plugin.TBContext(
        data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))))
    ctx = context.RequestContext()
    content = plugin.hparams_metadata(ctx, "")
    return content, plugin.experiment_from_metadata(ctx, "", True, content,
                                                    plugin.hparams_from_data_provider(ctx, "", limit=None))


def summaries_in(content):
    from tensorboard.plugins.hparams import metadata

    return {run: metadata.parse_experiment_plugin_data(tags[metadata.EXPERIMENT_TAG])
            for run, tags in content.items() if metadata.EXPERIMENT_TAG in tags}


def test_runs_that_override_different_keys_share_one_hparams_table_with_the_result_first(tmp_path):
    """Two runs under outputs/, one giving trainer.T, the other optim.lr: `tensorboard --logdir outputs` finds one
    experiment summary, whose columns are both runs' hparams (those that differ marked, so that TensorBoard shows
    them among its first 5) and the metrics, test accuracy first; each run's session holds its own values."""
    from tensorboard.plugins.hparams import metadata

    run_snnexp("train", "neuron=lif", "trainer.T=2", *SHORT, "hydra.run.dir=outputs/lif", cwd=tmp_path)
    run_snnexp("train", "neuron=plif", "optim.lr=0.01", *SHORT, "hydra.run.dir=outputs/plif", cwd=tmp_path)
    content, served = hparams_plugin_view(tmp_path / "outputs")
    summaries = summaries_in(content)
    assert len(summaries) == 1 and served.metric_infos == next(iter(summaries.values())).metric_infos
    assert [m.name.tag for m in served.metric_infos] == [
        "test/best_acc", "test/acc", "test/loss", "train/loss", "train/samples_per_s", "activity/firing_rate",
        "activity/energy_per_sample_pj"]  # no test/val_chosen_acc: neither run holds out a validation set
    assert [h.name for h in served.hparam_infos][:3] == ["neuron", "optim.lr", "trainer.T"]  # those that differ
    differs = {h.name: h.differs for h in served.hparam_infos}
    assert differs["trainer.T"] and differs["optim.lr"] and differs["neuron"] and not differs["model"]
    assert "trainer.progress" not in differs  # changes neither result nor speed
    lif, plif = (metadata.parse_session_start_info_plugin_data(content[run][metadata.SESSION_START_INFO_TAG]).hparams
                 for run in ("lif", "plif"))
    assert (lif["trainer.T"].number_value, lif["neuron"].string_value, lif["optim.lr"].number_value) == (2, "lif", 1e-3)
    assert (plif["trainer.T"].number_value, plif["neuron"].string_value, plif["optim.lr"].number_value) == (
        4, "plif", 0.01)
    written = set(tags_of(tmp_path / "outputs" / "lif").Tags()["scalars"])
    assert {m.name.tag for m in served.metric_infos} <= written  # every metric is a scalar the run writes


def fake_run(root, name, hparams):
    from snnexp.report.hparams import RUN_FILE

    (root / name).mkdir(parents=True)
    (root / name / RUN_FILE).write_text(json.dumps({"hparams": hparams}))


def summary_files(logdir):
    return sorted(p.relative_to(logdir).as_posix() for p in logdir.rglob("*tfevents*"))


def test_a_rewritten_summary_is_a_new_run_and_the_old_one_is_gone(tmp_path):
    """A running TensorBoard keeps the first metadata it read for a run's tag (a summary rewritten in place stays
    stale) and drops a run whose folder is gone: each rewrite is a new run, the previous one deleted."""
    from snnexp.report.hparams import update_summary

    fake_run(tmp_path, "digits/a", {"neuron": "lif", "trainer.T": 4})
    update_summary(tmp_path)
    first = summary_files(tmp_path)
    fake_run(tmp_path, "multirun/1/b", {"neuron": "plif", "optim.lr": 0.01, "dataset.val_fraction": 0.1})
    update_summary(tmp_path)
    content, served = hparams_plugin_view(tmp_path)
    assert len(first) == 1 and len(summary_files(tmp_path)) == 1 and summary_files(tmp_path) != first
    assert len(summaries_in(content)) == 1 and not (tmp_path / first[0]).parent.exists()
    assert {h.name for h in served.hparam_infos} == {"neuron", "trainer.T", "optim.lr", "dataset.val_fraction"}
    assert [m.name.tag for m in served.metric_infos][:3] == ["test/best_acc", "test/acc", "test/val_chosen_acc"]


def test_each_column_has_one_type(tmp_path):
    """Numbers an interval, bools and strings their values; a key whose runs differ in type a string column (as
    TensorBoard would make it); a key some runs lack differs."""
    from tensorboard.plugins.hparams import api_pb2

    from snnexp.report.hparams import update_summary

    fake_run(tmp_path, "a", {"lr": 0.1, "amp": True, "neuron": "lif", "mixed": 1, "only_a": 3})
    fake_run(tmp_path, "b", {"lr": 2, "amp": False, "neuron": "lif", "mixed": "x"})
    update_summary(tmp_path)
    infos = {h.name: h for h in hparams_plugin_view(tmp_path)[1].hparam_infos}
    assert infos["lr"].type == api_pb2.DATA_TYPE_FLOAT64
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (0.1, 2)
    assert infos["amp"].type == api_pb2.DATA_TYPE_BOOL and infos["amp"].differs
    assert infos["neuron"].type == api_pb2.DATA_TYPE_STRING and not infos["neuron"].differs
    assert infos["mixed"].type == api_pb2.DATA_TYPE_STRING
    assert [v.string_value for v in infos["mixed"].domain_discrete.values] == ["1", "x"]
    assert infos["only_a"].differs


@pytest.mark.parametrize("text", [b"{not json", b"[1, 2]", b'{"hparams": [1]}', b'{"hparams": {"x": [1]}}',
                                  b'{"hparams": {"x": null}}', b'{"hparams": {"x": NaN}}', b"[" * 100_000,
                                  b'{"hparams": {"x": 1%s}}' % (b"0" * 400),
                                  b"\xff\xfe\x00", b" " * (2 << 20)])
def test_a_damaged_hparams_file_is_skipped_with_a_warning(tmp_path, caplog, text):
    """hparams.json is data from disk: anything but {"hparams": {name: bool, finite number or string}} (invalid
    JSON or UTF-8, another shape, null, NaN, an int no float holds, nesting deep enough for a RecursionError, a file
    over 1 MiB) skips that run with one warning naming the file; the other runs make the table."""
    from snnexp.report.hparams import RUN_FILE, update_summary

    fake_run(tmp_path, "good", {"neuron": "lif"})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RUN_FILE).write_bytes(text)
    update_summary(tmp_path)
    assert [h.name for h in hparams_plugin_view(tmp_path)[1].hparam_infos] == ["neuron"]
    assert f"skipped {tmp_path / 'bad' / RUN_FILE} in the HPARAMS table" in caplog.text


def test_runs_that_register_at_once_all_enter_the_one_summary(tmp_path):
    """Processes registering at the same time (a parallel sweep, hydra/launcher=joblib) each rewrite the summary
    holding the log folder's lock: the last summary lists every run, and it is the only one."""
    code = ("import json, sys; from pathlib import Path; from snnexp.report.hparams import RUN_FILE, update_summary\n"
            "root, k = Path(sys.argv[1]), sys.argv[2]\n"
            "for i in range(5):\n"
            "    (root / f'{k}-{i}').mkdir(); (root / f'{k}-{i}' / RUN_FILE).write_text(json.dumps("
            "{'hparams': {f'key{k}-{i}': i}}))\n"
            "    update_summary(root)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(k)]) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    content, served = hparams_plugin_view(tmp_path)
    assert len(summaries_in(content)) == 1 and len(summary_files(tmp_path)) == 1
    assert {h.name for h in served.hparam_infos} == {f"key{k}-{i}" for k in range(4) for i in range(5)}


def test_the_log_folder(tmp_path):
    """outputs/ for the default run and sweep folders; a run folder outside the start folder: its parent; one
    directly in it: none (the user's own folder is not searched). A summary below the one written is removed:
    TensorBoard would pick either."""
    from snnexp.report.hparams import SUMMARY_DIR, log_folder, update_summary

    assert log_folder(tmp_path / "outputs/digits/2026_convnet-lif-T4", tmp_path) == tmp_path / "outputs"
    assert log_folder(tmp_path / "outputs/multirun/2026/neuron=lif", tmp_path) == tmp_path / "outputs"
    assert log_folder(tmp_path / "elsewhere/sweep/0", tmp_path / "here") == tmp_path / "elsewhere/sweep"
    assert log_folder(tmp_path / "lif", tmp_path) is None and log_folder(tmp_path, tmp_path) is None
    fake_run(tmp_path, "a/b/sweep/0", {"x": 1})
    update_summary(tmp_path / "a/b/sweep")
    fake_run(tmp_path, "a/c", {"y": 1})
    update_summary(tmp_path / "a")
    assert [p.split("/")[0] for p in summary_files(tmp_path / "a")] == [SUMMARY_DIR]
    assert {h.name for h in hparams_plugin_view(tmp_path / "a")[1].hparam_infos} == {"x", "y"}


def test_only_runs_that_snnexp_train_started_register(tmp_path):
    """fit called from Python has no log folder: the run writes its session, and nothing outside its folder."""
    from snnexp.report.hparams import RUN_FILE

    with RunLogger(tmp_path / "run") as logger:
        logger.start({"x": 1, "unset": None, "hidden": [256, 256]})
    assert not (tmp_path / "run" / RUN_FILE).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_summary_that_cannot_be_written_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch):
    from snnexp.report import hparams

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hparams, "_write_summary", full_disk)
    proc = run_snnexp("train", *SHORT, "hydra.run.dir=outputs/r", cwd=tmp_path)
    assert "the HPARAMS table was not updated" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "outputs/r/metrics.json").read_text())["epoch"] == 1


def test_each_custom_scalars_chart_draws_only_its_own_tags(lif_and_plif):
    """A chart's tags are regular expressions that TensorBoard matches anywhere in a tag: the epoch's loss chart
    must not also draw the per-step loss of the steps/ sub-run (x 1 to N, squeezing the epochs' points)."""
    from snnexp.report.tensorboard import LAYOUT

    lif, _ = lif_and_plif
    tags = set(lif.Tags()["scalars"]) | {"train/loss_step"}  # the steps/ sub-run's one tag
    drawn = {title: {t for t in tags if any(re.search(r, t) for r in regexes)}
             for charts in LAYOUT.values() for title, (_, regexes) in charts.items()}
    assert drawn["loss: train, test"] == {"train/loss", "test/loss"}
    assert drawn["training loss at every step"] == {"train/loss_step"}
    assert drawn["accuracy: train, test, best test, paper"] == {"train/acc", "test/acc", "test/best_acc"}
