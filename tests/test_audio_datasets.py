"""The audio spike datasets SHD and SSC end to end: small files in the published HDF5 layout (tests/audio_writers.py),
read by our loader and by tonic's own SHD/SSC classes, frames counted by hand and by tonic's ToFrame, archives placed
by hand, tonic's download (its download function replaced: there is no network here), damaged files, the configs
that set trainer.T, and training runs of the CLI."""

import hashlib
import json
import re
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from audio_writers import gzip_file, make_shd, make_ssc, write_hsd, write_random_hsd, zip_file
from conftest import run_snnexp
from snnexp.cli import conf_dir
from snnexp.data import CorruptFile, DatasetError, shd, ssc
from snnexp.data.audio import _open, read_sample
from test_data_storage import read_only, run_read_only, snapshot  # noqa: F401 (read_only: a fixture)

TRAIN_STEP = ["model=mlp", "trainer.T=8", "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=4",
              "hydra.run.dir=run"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def frames(ds):
    return np.stack([ds[i][0].numpy() for i in range(len(ds))]), [ds[i][1] for i in range(len(ds))]


def load(root, fn=shd, **options):
    return fn(str(root), download=False, cache_dir=str(root / "cache"), workers=1, **options)


# ----------------------------------------------------------------------------------------- frames by hand

HAND_TIMES = [0.0, 0.004, 0.0125, 0.0126, 0.029, 0.031, 0.5]  # seconds; float16 keeps each in the bin it reads as
HAND_UNITS = [0, 699, 5, 5, 3, 3, 1]


def write_hand_shd(root: Path):
    """Train: sample 0 the spikes above (label 7), sample 1 no spike at all (label 19); test: sample 0 again."""
    write_hsd(root / "SHD" / "shd_train.h5", [HAND_TIMES, []], [HAND_UNITS, []], [7, 19])
    write_hsd(root / "SHD" / "shd_test.h5", [HAND_TIMES], [HAND_UNITS], [3])


def test_fixed_bins_count_the_spikes_of_each_channel_from_t_0(tmp_path):
    write_hand_shd(tmp_path)
    splits = load(tmp_path, T=3, bin_ms=10)
    x, labels = frames(splits.train)
    expected = np.zeros((2, 3, 700), dtype=np.float32)
    expected[0, 0, 0] = expected[0, 0, 699] = 1  # 0 and 4 ms
    expected[0, 1, 5] = 2  # 12.5 and 12.6 ms
    expected[0, 2, 3] = 1  # 29 ms; 31 ms and 500 ms come after the 3 bins of 10 ms: dropped
    np.testing.assert_array_equal(x, expected)  # sample 1, no spike: 3 empty frames
    assert labels == [7, 19] and x.dtype == np.float32
    assert splits.input_shape == (700,) and splits.num_classes == 20 and splits.sequence


def test_without_bin_ms_the_sample_is_cut_into_T_equal_slices_of_0_to_its_last_spike(tmp_path):
    write_hand_shd(tmp_path)
    x, _ = frames(load(tmp_path, T=2, bin_ms=None).test)
    expected = np.zeros((1, 2, 700), dtype=np.float32)  # slices [0, 250) and [250, 500] ms
    expected[0, 0, [0, 699, 5, 3]] = [1, 1, 2, 2]
    expected[0, 1, 1] = 1
    np.testing.assert_array_equal(x, expected)


def test_channels_sums_neighbouring_channels(tmp_path):
    make_shd(tmp_path)
    full, _ = frames(load(tmp_path, T=4, bin_ms=25).train)
    fewer = load(tmp_path, T=4, bin_ms=25, channels=140)
    x, _ = frames(fewer.train)
    np.testing.assert_array_equal(x, full.reshape(len(full), 4, 140, 5).sum(-1))
    assert fewer.input_shape == (140,) and full.sum() > 100


# --------------------------------------------------------------------------------------- tonic as the peer

def test_events_and_frames_equal_tonics_reader_and_toframe(tmp_path):
    """tonic's SHD class reads the same spikes (tonic wants its zip beside the file: one is placed), and its
    ToFrame with windows of bin_ms from 0 to T bins gives our frames."""
    import tonic

    folder = make_shd(tmp_path / "data", n_train=6)
    zip_file(folder / "shd_train.h5", folder / "shd_train.h5.zip")
    shd_tonic = tonic.datasets.SHD(str(tmp_path / "data"), train=True)
    theirs = [shd_tonic[i] for i in range(len(shd_tonic))]  # read first: HDF5 refuses a file open with and without
    T, bin_ms = 7, 12                                         # its lock at once, and tonic leaves its files open
    ours = load(tmp_path / "data", T=T, bin_ms=bin_ms)
    with _open(folder / "shd_train.h5") as f:
        for i, (events, label) in enumerate(theirs):
            t_us, units = read_sample(f, "shd_train.h5", i, 20)
            np.testing.assert_array_equal(t_us, events["t"])
            np.testing.assert_array_equal(units, events["x"])
            to_frame = tonic.transforms.ToFrame(sensor_size=tonic.datasets.SHD.sensor_size,
                                                time_window=bin_ms * 1000, start_time=0, end_time=T * bin_ms * 1000)
            x, our_label = ours.train[i]
            np.testing.assert_array_equal(x.numpy(), to_frame(events)[:, 0, :])
            assert our_label == label and x.sum() > 0


# --------------------------------------------------------------------------------------------------- SSC

def test_ssc_tests_on_the_test_set_or_the_validation_set(tmp_path):
    folder = make_ssc(tmp_path, n=(8, 3, 5))
    test = load(tmp_path, ssc, T=4)
    assert (len(test.train), len(test.test), test.num_classes) == (8, 5, 35)
    (folder / "ssc_test.h5").unlink()  # the validation set alone is enough for test_split=valid
    valid = load(tmp_path, ssc, T=4, test_split="valid")
    assert len(valid.test) == 3 and valid.test.labels.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="dataset.test_split='train' is out of range: must be test or valid"):
        load(tmp_path, ssc, test_split="train")


# ------------------------------------------------------------------------------ archives, download, missing

def test_archives_placed_by_hand_are_decompressed_into_the_cache_and_the_folder_is_not_written(tmp_path, monkeypatch):
    import tonic

    folder = make_shd(tmp_path / "src")
    data = tmp_path / "data" / "SHD"
    data.mkdir(parents=True)
    gzip_file(folder / "shd_train.h5", data / "shd_train.h5.gz")  # the authors' archive
    zip_file(folder / "shd_test.h5", data / "shd_test.h5.zip")  # tonic's mirror's
    monkeypatch.setattr(tonic.datasets.SHD, "test_md5", md5(data / "shd_test.h5.zip"))  # as if it were official
    before = snapshot(tmp_path / "data")
    splits = shd(str(tmp_path / "data"), download=True, T=4, cache_dir=str(tmp_path / "cache"), workers=1)
    assert snapshot(tmp_path / "data") == before
    plain = load(tmp_path / "src", T=4)
    for ours, theirs in ((splits.train, plain.train), (splits.test, plain.test)):
        np.testing.assert_array_equal(frames(ours)[0], frames(theirs)[0])
    assert len(list((tmp_path / "cache" / "extracted").glob("SHD-*/shd_*.h5"))) == 2


def test_a_damaged_archive_is_named(tmp_path, monkeypatch):
    import tonic

    make_shd(tmp_path)
    (tmp_path / "SHD" / "shd_train.h5").unlink()
    (tmp_path / "SHD" / "shd_train.h5.gz").write_bytes(b"\x1f\x8b\x08 cut short")
    with pytest.raises(CorruptFile, match=r"SHD/shd_train.h5.gz: cannot extract it .*: a damaged or incomplete "
                                          r"download\? Get it again"):
        load(tmp_path)
    (tmp_path / "SHD" / "shd_train.h5.gz").unlink()
    zip_file(tmp_path / "SHD" / "shd_test.h5", tmp_path / "SHD" / "shd_train.h5.zip")  # the wrong file inside
    monkeypatch.setattr(tonic.datasets.SHD, "train_md5", md5(tmp_path / "SHD" / "shd_train.h5.zip"))  # past the md5
    with pytest.raises(CorruptFile, match=r"SHD/shd_train.h5.zip: holds no shd_train.h5: not the SHD archive\? Get "
                                          r"it again"):
        load(tmp_path)


def fake_tonic_download(calls, fail=None):
    """In place of tonic's download_and_extract_archive (tonic.dataset): what the real one leaves in download_root,
    the zip and the .h5 extracted from it, written instead of fetched."""
    def download_and_extract_archive(url, download_root, filename=None, md5=None, **_):
        calls.append((url, filename, md5))
        if fail:
            raise fail
        name = filename[:-len(".zip")]
        write_random_hsd(Path(download_root) / name, 5, 35 if name.startswith("ssc") else 20)
        zip_file(Path(download_root) / name, Path(download_root) / filename)
    return download_and_extract_archive


def test_download_true_fetches_the_missing_files_with_tonic(tmp_path, monkeypatch):
    import tonic

    calls = []
    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", fake_tonic_download(calls))
    make_shd(tmp_path / "data", n_test=3)
    (tmp_path / "data" / "SHD" / "shd_train.h5").unlink()
    splits = shd(str(tmp_path / "data"), download=True, T=4, cache_dir=str(tmp_path / "cache"), workers=1)
    assert calls == [("https://zenkelab.org/datasets/shd_train.h5.zip", "shd_train.h5.zip",
                      "f3252aeb598ac776c1b526422d90eecb")]  # only the missing one, with tonic's md5
    assert (len(splits.train), len(splits.test)) == (5, 3)
    make_ssc(tmp_path / "data", n=(2, 2, 2))
    (tmp_path / "data" / "SSC" / "ssc_valid.h5").unlink()
    ssc(str(tmp_path / "data"), download=True, T=4, test_split="valid", cache_dir=str(tmp_path / "cache"), workers=1)
    assert calls[-1] == ("https://zenkelab.org/datasets/ssc_valid.h5.zip", "ssc_valid.h5.zip",
                         "b4eee3516a4a90dd0c71a6ac23a8ae43")


def test_a_failed_download_and_missing_files_say_what_is_there_and_where_to_put_what(tmp_path, monkeypatch):
    import tonic

    folder = make_shd(tmp_path)
    (folder / "shd_train.h5").unlink()
    gzip_file(folder / "shd_test.h5", folder / "shd_test.h5.gz")
    (folder / "shd_test.h5").unlink()
    with pytest.raises(DatasetError) as err:
        load(tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == (f"SHD not found in {tmp_path / 'SHD'} (dataset.download=false; dataset.download=true fetches "
                        "what is missing with tonic).")
    assert lines[1:4] == ["Expected layout:", f"  {tmp_path}/SHD/shd_train.h5", f"  {tmp_path}/SHD/shd_test.h5"]
    assert lines[5] == ("  shd_train.h5   missing;  or its archive shd_train.h5.gz (the authors' site) or "
                        "shd_train.h5.zip md5 f3252aeb598ac776c1b526422d90eecb (tonic's mirror)")
    assert lines[6].startswith("  shd_test.h5    here as shd_test.h5.gz;  or its archive")
    assert lines[7] == f"Put the extracted files or the archive(s) in {tmp_path / 'SHD'}/, or point dataset.data_dir " \
                       "at the folder that holds SHD/."
    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive",
                        fake_tonic_download([], fail=urllib.error.URLError("no network")))
    with pytest.raises(DatasetError, match=r"SHD not found in .* and the download failed \(<urlopen error no "
                                           r"network>\)"):
        shd(str(tmp_path), download=True, cache_dir=str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------- damaged files

def damage(folder: Path, case: str) -> str:
    """Damage shd_train.h5 (4 samples) as `case` says; returns the message expected."""
    path = folder / "shd_train.h5"
    rng = np.random.default_rng(0)
    times = [np.sort(rng.uniform(0, 0.05, 10)) for _ in range(4)]
    units = [rng.integers(0, 700, 10) for _ in range(4)]
    labels = [0, 1, 2, 3]
    if case == "truncated":
        write_hsd(path, times, units, labels)
        path.write_bytes(path.read_bytes()[:3000])
        return f"{path}: not a readable HDF5 file ("
    if case == "not hdf5":
        path.write_text("Not Found")  # a web server's error page saved under the name
        return f"{path}: not a readable HDF5 file ("
    if case == "no spikes/times":
        write_hsd(path, times, units, labels)
        import h5py

        with h5py.File(path, "a") as f:
            del f["spikes/times"]
        return f"{path}: has no spikes/times: not an SHD/SSC file (these hold spikes/times, spikes/units and labels)"
    if case == "label out of range":
        labels[1] = 20
        message = f"{path}: sample 1: label 20 outside the 20 classes 0..19"
    elif case == "unit out of range":
        units[2][4] = 700
        message = f"{path}: sample 2: channel 700 outside the 700 channels 0..699"
    elif case == "times go backwards":
        times[3] = np.array([0.001, 0.002, 0.003, 0.004, 0.005, 0.04, 0.01, 0.041, 0.042, 0.043])
        message = f"{path}: sample 3: spike times go backwards (0.040008544921875 s, then 0.01000213623046875 s)"
    elif case == "negative time":
        times[0][0] = -0.001
        message = f"{path}: sample 0: a negative or non-finite spike time (-0.0010004043579101562 s)"
    write_hsd(path, times, units, labels)
    return message


FILE_CASES = ["truncated", "not hdf5", "no spikes/times"]
SAMPLE_CASES = ["label out of range", "unit out of range", "times go backwards", "negative time"]


@pytest.mark.parametrize("case", FILE_CASES + SAMPLE_CASES)
def test_a_damaged_file_is_named_and_a_damaged_sample_can_be_skipped_with_a_count(tmp_path, case, caplog):
    folder = make_shd(tmp_path)
    message = damage(folder, case)
    with pytest.raises(CorruptFile) as err:
        load(tmp_path, T=4)
    assert str(err.value).startswith(message)
    if case in SAMPLE_CASES:
        splits = load(tmp_path, T=4, on_corrupt="skip")
        assert len(splits.train) == 3
        assert "1 corrupt file(s) skipped (dataset.on_corrupt=skip): 1 of 4 samples left out" in caplog.text


# ------------------------------------------------------------------------------------- configs and the CLI

def compose_train(config_dir: Path, *overrides):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg)


def test_the_audio_configs_bring_their_T_and_the_command_line_still_wins():
    assert compose_train(conf_dir(), "dataset=shd")["trainer"]["T"] == 100
    assert compose_train(conf_dir(), "dataset=ssc")["trainer"]["T"] == 100
    cfg = compose_train(conf_dir(), "dataset=shd", "trainer.T=20")
    assert cfg["trainer"]["T"] == 20 and cfg["dataset"]["T"] == "${trainer.T}"
    assert compose_train(conf_dir(), "dataset=shd", "experiment=plif_nmnist")["trainer"]["T"] == 10


def test_every_other_dataset_and_experiment_composes_as_before_the_dataset_moved_after_trainer(tmp_path):
    """The defaults list had dataset right after _self_: a copy of conf/ with it there composes every other choice
    to the same config, and dataset=shd to trainer/default.yaml's T (which is why it moved)."""
    old = tmp_path / "conf"
    shutil.copytree(conf_dir(), old)
    lines = (old / "train.yaml").read_text().splitlines()
    entry = lines.index("  - dataset: digits")
    lines.insert(lines.index("  - _self_") + 1, lines.pop(entry))
    (old / "train.yaml").write_text("\n".join(lines) + "\n")
    choices = [f"dataset={p.stem}" for p in (conf_dir() / "dataset").glob("*.yaml") if p.stem not in ("shd", "ssc")]
    choices += [f"experiment={p.stem}" for p in (conf_dir() / "experiment").glob("*.yaml")]
    for choice in choices:
        assert compose_train(conf_dir(), choice) == compose_train(old, choice), choice
    shd = old / "dataset" / "shd.yaml"  # its model/readout overrides need the dataset after those groups, too
    shd.write_text(re.sub(r"defaults:\n(  - .*\n)+", "", shd.read_text()))
    assert compose_train(old, "dataset=shd")["trainer"]["T"] == 4


def test_shd_trains_through_the_cli_and_ssc_tests_on_its_validation_set(tmp_path):
    make_shd(tmp_path / "data")
    make_ssc(tmp_path / "data")
    run_snnexp("train", "dataset=shd", "dataset.data_dir=data", "dataset.cache_dir=cache", *TRAIN_STEP, cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 2
    run_snnexp("train", "dataset=ssc", "dataset.data_dir=data", "dataset.cache_dir=cache", "dataset.test_split=valid",
               "dataset.channels=140", *TRAIN_STEP[:-1], "hydra.run.dir=ssc", cwd=tmp_path)
    assert json.loads((tmp_path / "ssc" / "metrics.json").read_text())["step"] == 2


@pytest.mark.parametrize("neuron", [None, "lif", "alif"])
def test_shd_trains_with_the_defaults_it_brings(tmp_path, neuron):
    """`snnexp train dataset=shd` names no model: the dataset brings the recurrent network, the membrane readout and
    cross-entropy, and any neuron swaps in."""
    make_shd(tmp_path / "data")
    swap = [f"neuron={neuron}"] if neuron else []
    run_snnexp("train", "dataset=shd", "dataset.data_dir=data", "dataset.cache_dir=cache", *swap, "trainer.T=6",
               "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=4", "hydra.run.dir=run", cwd=tmp_path)
    cfg = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert cfg.model._target_ == "snnexp.nn.models.RSNN" and cfg.readout._target_.endswith("MembraneReadout")
    assert cfg.loss._target_.endswith("CERate")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 2 and np.isfinite(metrics["test_loss"])
    assert list(metrics["firing_rate"]) == ["00_RecurrentFC"]  # the output layer integrates: it does not spike


def test_shd_trains_from_a_read_only_folder(tmp_path, read_only):  # noqa: F811 (the fixture)
    make_shd(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    proc = run_read_only(read_only, tmp_path / "data", "train", "dataset=shd", "dataset.data_dir=data",
                         "dataset.cache_dir=cache", "dataset.download=false", *TRAIN_STEP, cwd=tmp_path, env={})
    assert proc.returncode == 0, proc.stderr
    assert snapshot(tmp_path / "data") == before and (tmp_path / "run" / "metrics.json").is_file()


# (id, arguments, the message's first line): bad input as a user meets it, in the style of test_bad_input.py
CLI_CASES = [
    ("channels not dividing 700", ["dataset=shd", "dataset.channels=300"],
     "  dataset.channels=300 is out of range: must be a divisor of 700 (700, 350, 175, 140, 100, 70, ...: 700 / "
     "channels neighbours summed)"),
    ("unknown test split", ["dataset=ssc", "dataset.test_split=train"],
     "  dataset.test_split='train' is out of range: must be test or valid"),
    ("no bins", ["dataset=shd", "dataset.bin_ms=0"],
     "  dataset.bin_ms=0 is out of range: must be > 0, or null for T equal slices"),
    ("missing files", ["dataset=shd", "dataset.data_dir=nowhere", "dataset.download=false"],
     "snnexp: error: SHD not found in {w}/nowhere/SHD (dataset.download=false; dataset.download=true fetches what "
     "is missing with tonic)."),
    ("a sample out of range", ["dataset=shd", "dataset.data_dir=bad", "dataset.workers=1"],
     "snnexp: error: {w}/bad/SHD/shd_train.h5: sample 2: channel 700 outside the 700 channels 0..699 "
     "(dataset.on_corrupt=skip leaves such files out)"),
]


@pytest.mark.parametrize("name,args,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_audio_input_is_one_message_and_exit_2(tmp_path, name, args, message):
    damage(make_shd(tmp_path / "bad"), "unit out of range")
    proc = run_snnexp("train", *args, "dataset.cache_dir=cache", *TRAIN_STEP, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message.replace("{w}", str(tmp_path)) in proc.stderr.splitlines(), proc.stderr
