"""dataset.val_fraction (issue 31, honest numbers): a seeded, class-stratified part of the training set held out;
best.pt is then the epoch with the best validation accuracy, and the run reports that epoch's test accuracy ("B")
beside the best test accuracy ("A"), so that the test set chooses nothing."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import Dataset, TensorDataset

from audio_writers import make_ssc
from conftest import run_snnexp
from snnexp.cli import conf_dir
from snnexp.data import ssc
from snnexp.data.recordings import FrameDataset
from snnexp.data.static import Splits
from snnexp.data.validation import hold_out, labels_of
from snnexp.report.metrics import epoch_metrics

RUN = ["trainer.progress=false", "hydra.run.dir=r"]


def splits_of(labels, test=None) -> Splits:
    y = torch.as_tensor(labels)
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # each sample's index, to follow it
    return Splits(TensorDataset(x, y), test or TensorDataset(x[:1], y[:1]), (1,), int(y.max()) + 1)


def indices(dataset) -> set:
    return {int(dataset[i][0][0]) for i in range(len(dataset))}


def test_the_held_out_part_is_stratified_disjoint_and_the_same_every_time():
    labels = [0] * 50 + [1] * 30 + [2] * 20  # unbalanced classes
    held = hold_out(splits_of(labels), 0.2, seed=0)
    train, val = indices(held.train), indices(held.val)
    assert not train & val and train | val == set(range(100))
    assert np.bincount(labels_of(held.val)).tolist() == [10, 6, 4]  # 20 % of each class
    assert indices(hold_out(splits_of(labels), 0.2, seed=0).val) == val  # no other randomness (trainer.seed)
    assert indices(hold_out(splits_of(labels), 0.2, seed=1).val) != val


def test_every_class_of_two_or_more_keeps_a_sample_on_each_side():
    held = hold_out(splits_of([0, 0, 1, 1, 1, 2]), 0.01, seed=0)  # 1 % rounds to none: one of each is held
    assert sorted(labels_of(held.val)) == [0, 1] and sorted(labels_of(held.train)) == [0, 1, 1, 2]


class Transformed(Dataset):
    """A torchvision-style dataset: a transform attribute, applied when a sample is read, and targets."""

    def __init__(self, transform):
        self.transform, self.targets = transform, [0, 1] * 10

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return self.transform(i), self.targets[i]


def test_the_validation_samples_are_read_as_the_test_set_reads_its_own():
    """CIFAR's training set crops and flips at random; its held-out part must be measured as the test set is."""
    train, test = Transformed(lambda i: ("augmented", i)), Transformed(lambda i: ("plain", i))
    held = hold_out(Splits(train, test, (1,), 2), 0.2, seed=0)
    assert {held.val[i][0][0] for i in range(len(held.val))} == {"plain"}
    assert {held.train[i][0][0] for i in range(len(held.train))} == {"augmented"}


def test_held_out_event_frames_are_never_flipped_or_moved(tmp_path):
    frames = np.arange(4 * 2 * 2 * 1 * 3, dtype=np.uint8).reshape(4, 2, 2, 1, 3)  # [N, T, 2, H, W], asymmetric
    np.save(tmp_path / "frames.npy", frames)
    np.save(tmp_path / "labels.npy", np.array([0, 0, 1, 1]))
    augmented = FrameDataset(tmp_path, flip=True, roll=1)
    held = hold_out(Splits(augmented, FrameDataset(tmp_path), (2, 1, 3), 2), 0.5, seed=0)
    for k, i in enumerate(held.val.indices):
        for _ in range(10):  # flip (p = 0.5) and roll would show in ten reads
            assert torch.equal(held.val[k][0], torch.from_numpy(frames[i].astype(np.float32)))


def test_ssc_uses_its_official_validation_set(tmp_path):
    make_ssc(tmp_path, n=(8, 3, 5))
    splits = ssc(str(tmp_path), download=False, T=4, val_fraction=0.1, cache_dir=str(tmp_path / "cache"), workers=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 3, 5)
    with pytest.raises(ValueError, match="dataset.test_split=test"):
        ssc(str(tmp_path), download=False, T=4, val_fraction=0.1, test_split="valid", cache_dir=str(tmp_path / "c"))


def test_every_dataset_has_the_setting_off_by_default():
    """The presets keep the papers' protocol (no validation set) unless asked."""
    import yaml

    for path in (conf_dir() / "dataset").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert (cfg.get("dataset") or cfg)["val_fraction"] == 0.0, path.name


def summary(acc):
    return SimpleNamespace(acc=acc, loss=1 - acc, samples_per_s=1.0, skipped=0, firing_rate={}, grad_norm={},
                           **{k: 0 for k in ("spikes_per_sample", "layer_spikes_per_sample", "effective_acs_per_sample",
                                             "effective_macs_per_sample", "dense_ops_per_sample",
                                             "layer_acs_per_sample", "layer_macs_per_sample", "footprint_bytes",
                                             "parameter_count", "connection_sparsity", "activation_sparsity",
                                             "energy_per_sample_pj")})


def test_b_is_the_test_accuracy_of_the_epoch_the_validation_set_chose():
    """Validation best at epoch 2, test best at epoch 3: A is epoch 3's test accuracy, B epoch 2's."""
    metrics = {"best_test_acc": 0.0}
    for epoch, (val, test) in enumerate([(0.5, 0.6), (0.9, 0.7), (0.8, 0.95), (0.85, 0.9)], start=1):
        metrics = epoch_metrics(metrics, epoch, epoch * 10, summary(0.5), summary(test), 1.0, None, summary(val))
    assert (metrics["best_test_acc"], metrics["best_epoch"]) == (0.95, 3)  # A
    assert (metrics["best_val_acc"], metrics["best_val_epoch"], metrics["val_chosen_test_acc"]) == (0.9, 2, 0.7)  # B


def test_a_run_with_a_validation_set_keeps_the_validation_best_epoch_and_reports_both(tmp_path):
    out = run_snnexp("train", "dataset.val_fraction=0.1", "trainer.epochs=3", *RUN, cwd=tmp_path)
    run = tmp_path / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == metrics["best_val_epoch"]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    test_acc = {s.step: s.value for s in events.Scalars("test/acc")}
    assert metrics["val_chosen_test_acc"] == pytest.approx(test_acc[metrics["best_val_epoch"]])  # B: that epoch's
    assert metrics["best_test_acc"] == pytest.approx(max(test_acc.values()))  # A
    assert events.Scalars("test/val_chosen_acc")[-1].value == pytest.approx(metrics["val_chosen_test_acc"])
    assert [s.step for s in events.Scalars("val/acc")] == [1, 2, 3]
    # of the 1,437 training digits, 10 % of each class (rounded: within 0.5 a class of 143.7) is held out
    train, val, test = map(int, re.search(r"data: (\d+) train / (\d+) validation / (\d+) test", out.stdout).groups())
    assert train + val == 1437 and abs(val - 143.7) <= 5 and test == 360
    last = [line for line in (out.stderr + out.stdout).splitlines() if "done in" in line][-1]
    assert "chosen on the test set: A" in last and f"{100 * metrics['val_chosen_test_acc']:.2f}% (B, best.pt)" in last


def test_out_of_range_is_refused_before_anything_runs(tmp_path):
    out = run_snnexp("train", "dataset.val_fraction=1.0", *RUN, cwd=tmp_path, check=False)
    assert out.returncode == 2
    assert "dataset.val_fraction=1.0 is out of range: must be in [0, 1): 0 for no validation set" in out.stderr
    assert not Path(tmp_path / "r" / "checkpoints").exists()
