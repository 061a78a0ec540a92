"""Event datasets end to end: small files in the real formats (written by tests/event_writers.py), read
through tonic's readers and our frames and cache, into training runs of the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, run_snnexp
from event_writers import make_cifar10dvs, make_gesture, make_nmnist, write_aedat2, write_nmnist_bin
from snnexp.data import CorruptFile, DatasetError, dvs_cifar10, dvs_gesture, nmnist

TRAIN_STEP = ["trainer.T=4", "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=4",
              "model=mlp", "hydra.run.dir=run"]


def frames_of(ds, i):
    x, label = ds[i]
    return x.numpy(), label


# ----------------------------------------------------------------------------------------------- N-MNIST


def test_nmnist_frames_equal_a_hand_computation(tmp_path):
    folder = tmp_path / "NMNIST" / "Train" / "3"
    folder.mkdir(parents=True)
    # 5 events, T = 2 -> d = 2: slice 0 = events 0, 1; slice 1 = events 2, 3, 4
    write_nmnist_bin(folder / "00001.bin", np.array([0, 33, 5, 5, 0]), np.array([0, 33, 7, 7, 0]),
                     np.array([10, 20, 30, 40, 50]), np.array([1, 0, 1, 1, 0]))
    (tmp_path / "NMNIST" / "Test" / "3").mkdir(parents=True)
    (tmp_path / "NMNIST" / "Test" / "3" / "00002.bin").write_bytes((tmp_path / "NMNIST/Train/3/00001.bin").read_bytes())
    splits = nmnist(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "cache"))
    x, label = frames_of(splits.train, 0)
    expected = np.zeros((2, 2, 34, 34), dtype=np.float32)  # [frame, polarity, y, x]
    expected[0, 1, 0, 0] = 1
    expected[0, 0, 33, 33] = 1
    expected[1, 1, 7, 5] = 2
    expected[1, 0, 0, 0] = 1
    np.testing.assert_array_equal(x, expected)
    assert label == 3 and splits.input_shape == (2, 34, 34) and splits.sequence


def test_nmnist_order_is_sorted_and_labels_come_from_the_folders(tmp_path):
    make_nmnist(tmp_path, per_digit=3)
    splits = nmnist(str(tmp_path), download=False, T=3, cache_dir=str(tmp_path / "cache"))
    meta = json.loads((splits.train.cache_dir / "meta.json").read_text())
    rel = [Path(s).relative_to(tmp_path / "NMNIST" / "Train").as_posix() for s in meta["sources"]]
    assert rel == sorted(rel) and len(rel) == 30
    assert [int(r.split("/")[0]) for r in rel] == splits.train.labels.tolist()


@pytest.mark.slow  # 30 s (four CLI runs); test_frame_cache.py tests the cache in-process, and the DVS datasets
# train through the CLI in the tests below
def test_nmnist_trains_through_the_cli_and_reuses_its_cache(tmp_path):
    make_nmnist(tmp_path / "data")
    args = ["train", "dataset=nmnist", "dataset.cache_dir=cache", "dataset.download=false", *TRAIN_STEP]
    first = run_snnexp(*args, cwd=tmp_path)
    assert "building frame cache" in first.stderr + first.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 2
    run_snnexp("eval", "checkpoint=run/checkpoints/last.pt", "hydra.run.dir=ev", cwd=tmp_path)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_acc"] == metrics["test_acc"]
    again = run_snnexp(*args[:-1], "hydra.run.dir=run2", cwd=tmp_path)
    assert "building frame cache" not in again.stderr + again.stdout  # later runs read the cache
    changed = run_snnexp(*args[:-1], "trainer.T=5", "hydra.run.dir=run3", cwd=tmp_path)
    assert "building frame cache" in changed.stderr + changed.stdout  # T changed: a new cache


def test_truncated_file_is_named_or_skipped_with_a_count(tmp_path):
    make_nmnist(tmp_path / "data", per_digit=2, digits=range(2))
    bad = tmp_path / "data" / "NMNIST" / "Train" / "1" / "00101.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    args = ["train", "dataset=nmnist", "dataset.cache_dir=cache", "dataset.download=false", *TRAIN_STEP]
    proc = run_snnexp(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}: " in proc.stderr and "not a whole number of 5-byte N-MNIST events (truncated?)" in proc.stderr
    proc = run_snnexp(*args, "dataset.on_corrupt=skip", cwd=tmp_path)
    assert "1 corrupt file(s) skipped" in proc.stderr + proc.stdout


def test_missing_nmnist_says_where_to_put_which_files(tmp_path):
    with pytest.raises(DatasetError) as e:
        nmnist(str(tmp_path), download=False, T=4, cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    assert f"N-MNIST not found in {tmp_path / 'NMNIST'}" in msg
    assert "Train/<digit 0-9>/<n>.bin" in msg and "20959b8e626244a1b502305a9e6e2031" in msg


def test_bad_frame_options_are_refused_before_any_work(tmp_path):
    proc = run_snnexp("train", "dataset=nmnist", "dataset.split_by=count", "dataset.bin_ms=-1", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset.split_by='count' is out of range: must be one of number, time" in proc.stderr
    assert "dataset.bin_ms=-1 is out of range: must be > 0, or null for T equal slices" in proc.stderr
    proc = run_snnexp("train", "dataset=nmnist", "dataset.T=10", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "dataset.T=10 differs from trainer.T=4: set trainer.T (the frames per sample follow it)" in proc.stderr
    proc = run_snnexp("train", "dataset=nmnist", "dataset.bin_ms=5", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "dataset.bin_ms is set but dataset.split_by is not time" in proc.stderr


@pytest.mark.skipif(not (SHARED_DATA / "NMNIST").is_dir(), reason="real N-MNIST not present")
def test_real_nmnist_recordings_all_read_with_their_labels(tmp_path):
    splits = nmnist(str(SHARED_DATA), download=False, T=10, cache_dir=str(tmp_path))
    assert (len(splits.train), len(splits.test)) == (900, 100)
    for ds in (splits.train, splits.test):
        meta = json.loads((ds.cache_dir / "meta.json").read_text())
        assert [int(Path(s).parent.name) for s in meta["sources"]] == ds.labels.tolist()
        x, _ = ds[0]
        assert x.shape == (10, 2, 34, 34) and x.sum() > 1000  # a real recording has thousands of events


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "NMNIST").is_dir(), reason="real N-MNIST not present")
def test_real_nmnist_trains_clearly_above_chance(tmp_path):
    run_snnexp("train", "dataset=nmnist", f"dataset.data_dir={SHARED_DATA}", "dataset.cache_dir=cache",
               "trainer.T=10", "trainer.epochs=6", "hydra.run.dir=run", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best_test_acc"] > 0.6  # chance: 0.1


# ------------------------------------------------------------------------------------------- CIFAR10-DVS


def test_cifar10dvs_aedat2_split_is_stratified_stored_and_never_leaks(tmp_path):
    make_cifar10dvs(tmp_path)
    kwargs = dict(download=False, T=4, downsample=4, cache_dir=str(tmp_path / "cache"))
    splits = dvs_cifar10(str(tmp_path), **kwargs)
    assert (len(splits.train), len(splits.test)) == (27, 3)
    assert sorted(splits.test.labels.tolist()) == [0, 3, 9]  # one of each class
    assert splits.input_shape == (2, 32, 32)
    (store,) = (tmp_path / "cache").glob("dvs_cifar10-split-*.json")
    stored = json.loads(store.read_text())
    assert not set(stored["train"]) & set(stored["test"])
    # more recordings arrive: the earlier assignment stays as it was
    make_cifar10dvs(tmp_path, per_class=20, seed=1)
    dvs_cifar10(str(tmp_path), **kwargs)
    grown = json.loads(store.read_text())
    assert set(stored["test"]) <= set(grown["test"]) and set(stored["train"]) <= set(grown["train"])
    assert len(grown["test"]) == 6 and not set(grown["train"]) & set(grown["test"])


def test_cifar10dvs_aedat2_events_decode_to_the_written_pixels(tmp_path):
    folder = tmp_path / "CIFAR10DVS" / "dog"
    folder.mkdir(parents=True)
    write_aedat2(folder / "a.aedat", np.array([127, 3]), np.array([0, 100]), np.array([5, 9]), np.array([1, 0]))
    splits = dvs_cifar10(str(tmp_path), download=False, T=1, cache_dir=str(tmp_path / "cache"), test_fraction=0.4)
    x, label = frames_of(splits.train if len(splits.train) else splits.test, 0)
    assert label == 5 and x[0, 1, 0, 127] == 1 and x[0, 0, 100, 3] == 1 and x.sum() == 2


def test_cifar10dvs_aedat4_reads_through_tonic(tmp_path):
    pytest.importorskip("dv_processing", reason="writing AEDAT4 needs dv-processing (dev extra)")
    from event_writers import write_aedat4

    folder = tmp_path / "CIFAR10DVS" / "ship"
    folder.mkdir(parents=True)
    write_aedat4(folder / "a.aedat4", np.array([1, 2, 127]), np.array([3, 4, 127]), np.array([10, 20, 30]),
                 np.array([1, 0, 1]))
    splits = dvs_cifar10(str(tmp_path), download=False, T=1, cache_dir=str(tmp_path / "cache"), test_fraction=0.4)
    x, label = frames_of(splits.train if len(splits.train) else splits.test, 0)
    assert label == 8 and x[0, 1, 3, 1] == 1 and x[0, 0, 4, 2] == 1 and x[0, 1, 127, 127] == 1


def test_cifar10dvs_trains_through_the_cli(tmp_path):
    make_cifar10dvs(tmp_path / "data")
    run_snnexp("train", "dataset=dvs_cifar10", "dataset.cache_dir=cache", "dataset.download=false",
               "dataset.downsample=4", *TRAIN_STEP, cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 2


# ---------------------------------------------------------------------------------------- DVS128 Gesture


def test_gesture_samples_are_the_labelled_slices(tmp_path):
    folder = make_gesture(tmp_path)
    splits = dvs_gesture(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "cache"))
    assert splits.train.labels.tolist() == [0, 4, 10] and splits.test.labels.tolist() == [0, 4, 10]
    from snnexp.data.events import read_aedat31_polarity

    x, y, t, p = read_aedat31_polarity(str(folder / "user01_led.aedat"))
    n_in_second_gesture = int(((t >= 1_000_000) & (t < 2_000_000)).sum())
    assert frames_of(splits.train, 1)[0].sum() == n_in_second_gesture


def test_gesture_truncated_recording_is_named(tmp_path):
    folder = make_gesture(tmp_path)
    rec = folder / "user01_led.aedat"
    rec.write_bytes(rec.read_bytes()[:-100])
    with pytest.raises(CorruptFile, match="user01_led.aedat: truncated"):
        dvs_gesture(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "cache"), workers=1)


def test_gesture_trains_through_the_cli(tmp_path):
    make_gesture(tmp_path / "data")
    run_snnexp("train", "dataset=dvs_gesture", "dataset.cache_dir=cache", "dataset.download=false",
               "dataset.downsample=4", "dataset.flip=true", "dataset.roll=2", *TRAIN_STEP, "trainer.batch_size=1",
               cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 2


# ------------------------------------------------------------------------------- denoising, augmentation


def test_denoise_drops_isolated_events_only(tmp_path):
    folder = tmp_path / "NMNIST" / "Train" / "0"
    folder.mkdir(parents=True)
    # a burst of neighbouring events around (10, 10) within 1 ms, and one lone event far away, 100 ms later
    x = np.array([10, 11, 10, 11, 30])
    y = np.array([10, 10, 11, 11, 30])
    t = np.array([0, 100, 200, 300, 100_000])
    write_nmnist_bin(folder / "00001.bin", x, y, t, np.ones(5, dtype=int))
    (tmp_path / "NMNIST" / "Test").mkdir()
    (tmp_path / "NMNIST" / "Test" / "0").symlink_to(folder)
    raw = nmnist(str(tmp_path), download=False, T=1, cache_dir=str(tmp_path / "c"))
    clean = nmnist(str(tmp_path), download=False, T=1, denoise_ms=5, cache_dir=str(tmp_path / "c"))
    assert raw.train[0][0][0, 1, 30, 30] == 1 and raw.train[0][0].sum() == 5
    assert clean.train[0][0][0, 1, 30, 30] == 0 and clean.train[0][0][0, 1, 10:12, 10:12].sum() >= 3


def test_flip_and_roll_augment_training_frames_only(tmp_path):
    make_nmnist(tmp_path, per_digit=1, digits=range(2))
    plain = nmnist(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "c"))
    aug = nmnist(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "c"), flip=True, roll=3)
    x = plain.train[0][0]
    seen_flips = set()
    for _ in range(40):
        y = aug.train[0][0]
        assert y.sum() == x.sum()  # a flip and a wrapped translation move events, never drop them
        matches = [k for k in (x, x.flip(-1)) for dy in range(-3, 4) for dx in range(-3, 4)
                   if torch.equal(y, k.roll((dy, dx), dims=(-2, -1)))]
        assert matches
        seen_flips.add(any(torch.equal(y, x.flip(-1).roll((dy, dx), dims=(-2, -1)))
                           for dy in range(-3, 4) for dx in range(-3, 4)))
    assert seen_flips == {True, False}
    assert torch.equal(aug.test[0][0], plain.test[0][0])  # the test split is never augmented


def test_a_misspelt_option_is_named(tmp_path):
    with pytest.raises(TypeError, match="nmnist\\(\\) got an unexpected keyword argument 'spilt_by'; .* split_by"):
        nmnist(str(tmp_path), download=False, spilt_by="time")
