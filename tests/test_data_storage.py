"""Data as users have it (issue 17): a data folder that is only read (a read-only mount, a shared /datasets),
the official archives placed by hand and read whatever dataset.download says, small subsets whose split
would leave a set empty, and TensorBoard writes that fail. Files are in the real formats: torchvision's IDX
.gz and CIFAR tar.gz (tests/image_writers.py, gzipped and tarred here as the official releases are), the
event datasets' archives around tests/event_writers.py's recordings, and the real MNIST .gz files when
../shared/data is there."""

import errno
import gzip
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from tonic.datasets import CIFAR10DVS, NMNIST
from torch.utils.data import Subset

from conftest import run_snnexp
from event_writers import make_cifar10dvs, make_gesture, make_nmnist
from image_writers import make_cifar, make_mnist_like
from snnexp import data
from snnexp.cli import conf_dir
from snnexp.data import CorruptFile, DatasetError, events
from snnexp.data.recordings import stratified_split
from snnexp.errors import CheckpointError
from snnexp.report.tensorboard import RunLogger
from snnexp.train.build import build_run, make_loader
from snnexp.train.evaluate import evaluate
from snnexp.train.loop import fit

TRAIN_STEP = ["trainer.T=2", "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=4", "model=mlp",
              "hydra.run.dir=run"]


def snapshot(root: Path) -> dict:
    """Every path under root (folders too) and every file's sha256: a new file, folder or changed byte shows."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["trainer.progress=false", *overrides])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNEXP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------ official archives

def place_mnist_gz(src: Path, data_dir: Path, name: str, monkeypatch) -> Path:
    """The four IDX files gzipped into <data_dir>/<name>/raw/*.gz as the official release has them, with
    torchvision's md5 list pointed at ours; returns the folder of the uncompressed originals."""
    make_mnist_like(src, name, n_train=12, n_test=6)
    raw = data_dir / name / "raw"
    raw.mkdir(parents=True)
    for f in (src / name / "raw").iterdir():
        (raw / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    cls = getattr(torchvision.datasets, name)
    monkeypatch.setattr(cls, "resources", [(g, md5(raw / g)) for g, _ in cls.resources])
    return src / name / "raw"


def place_cifar_tgz(src: Path, data_dir: Path, cls, monkeypatch) -> Path:
    """torchvision's CIFAR layout tarred into <data_dir>/<cls.filename>, as the official release; returns the
    folder of the batches."""
    for attr, value in make_cifar(src, cls).items():  # torchvision checks the official md5s
        monkeypatch.setattr(cls, attr, value)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(data_dir / cls.filename, "w:gz") as tar:
        tar.add(src / cls.base_folder, arcname=cls.base_folder)
    monkeypatch.setattr(cls, "tgz_md5", md5(data_dir / cls.filename))
    return src / cls.base_folder


def idx_array(path: Path) -> np.ndarray:
    """IDX (LeCun's format): 0x0000 08 <ndim>, big-endian int32 sizes, uint8 data."""
    raw = path.read_bytes()
    ndim = raw[3]
    shape = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">i4")
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_mnist_gz_files_are_read_whatever_download_says_and_the_folder_is_not_written(tmp_path, cache, monkeypatch,
                                                                                      name, download):
    originals = place_mnist_gz(tmp_path / "src", tmp_path / "data", name, monkeypatch)
    before = snapshot(tmp_path / "data")
    loader = data.mnist if name == "MNIST" else data.fashion_mnist
    splits = loader(str(tmp_path / "data"), download=download)
    assert snapshot(tmp_path / "data") == before  # no *-ubyte beside the .gz files
    x, y = splits.train.tensors
    np.testing.assert_array_equal((x[:, 0] * 255).round().numpy(), idx_array(originals / "train-images-idx3-ubyte"))
    np.testing.assert_array_equal(y.numpy(), idx_array(originals / "train-labels-idx1-ubyte"))
    assert len(splits.test) == 6
    (extracted,) = [p for p in (cache / "extracted").glob(f"{name}-*") if p.is_dir()]
    assert sorted(p.name for p in (extracted / name / "raw").iterdir()) == sorted(p.name for p in originals.iterdir())


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("cls", [torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100], ids=lambda c: c.__name__)
def test_a_cifar_archive_is_read_whatever_download_says_and_the_folder_is_not_written(tmp_path, cache, monkeypatch,
                                                                                     cls, download):
    batches = place_cifar_tgz(tmp_path / "src", tmp_path / "data", cls, monkeypatch)
    before = snapshot(tmp_path / "data")
    loader = data.cifar10 if cls is torchvision.datasets.CIFAR10 else data.cifar100
    splits = loader(str(tmp_path / "data"), download=download, augment=False)
    assert snapshot(tmp_path / "data") == before  # no cifar-*-py/ beside the archive
    with open(batches / cls.test_list[0][0], "rb") as f:
        test_batch = pickle.load(f, encoding="latin1")
    x, label = splits.test[0]
    expected = torch.from_numpy(test_batch["data"][0].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(x, expected)
    assert label == test_batch["fine_labels" if cls is torchvision.datasets.CIFAR100 else "labels"][0]
    assert (len(splits.train), len(splits.test)) == (8, 4)


def test_extracted_files_in_the_data_folder_are_read_where_they_are(tmp_path, cache):
    make_mnist_like(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    assert len(data.mnist(str(tmp_path / "data"), download=False).train) == 8
    assert snapshot(tmp_path / "data") == before and not cache.exists()


def test_a_damaged_gz_file_is_named_with_its_md5(tmp_path, cache, monkeypatch):
    place_mnist_gz(tmp_path / "src", tmp_path / "data", "MNIST", monkeypatch)
    gz = tmp_path / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100])  # an interrupted copy
    expected = dict(torchvision.datasets.MNIST.resources)[gz.name]
    with pytest.raises(CorruptFile) as err:
        data.mnist(str(tmp_path / "data"), download=False)
    assert str(err.value) == (f"{gz}: not the official MNIST file (md5 {md5(gz)}, expected {expected}): a damaged or "
                              "incomplete copy? Get it again from https://ossci-datasets.s3.amazonaws.com/mnist/")


def test_missing_files_are_listed_with_the_ones_that_are_there(tmp_path, cache, monkeypatch):
    place_mnist_gz(tmp_path / "src", tmp_path / "data", "MNIST", monkeypatch)
    raw = tmp_path / "data" / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        data.mnist(str(tmp_path / "data"), download=False)
    lines = str(err.value).splitlines()
    assert lines[0] == "MNIST not found: it is not there and dataset.download=false."
    assert lines[1] == f"Put these files in {raw}/ (from https://ossci-datasets.s3.amazonaws.com/mnist/):"
    status = {line.split()[0]: line.rsplit("(", 1)[1].rstrip(")") for line in lines[2:6]}
    assert status == {"train-images-idx3-ubyte.gz": "here", "train-labels-idx1-ubyte.gz": "missing",
                      "t10k-images-idx3-ubyte.gz": "here", "t10k-labels-idx1-ubyte.gz": "here"}


def test_a_cache_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    place_mnist_gz(tmp_path / "src", tmp_path / "data", "MNIST", monkeypatch)
    (tmp_path / "afile").write_text("a file where the cache folder should be")
    monkeypatch.setenv("SNNEXP_CACHE", str(tmp_path / "afile"))
    with pytest.raises(DatasetError) as err:
        data.mnist(str(tmp_path / "data"), download=False)
    message = str(err.value)
    assert message.startswith(f"cannot extract {tmp_path / 'data' / 'MNIST' / 'raw' / 'train-images-idx3-ubyte.gz'}, ")
    assert message.endswith(": Not a directory; free disk space or set SNNEXP_CACHE (dataset.cache_dir for event "
                            "data) to a writable folder (the data folder is never written)")


def test_a_damaged_extracted_cifar_folder_is_named(tmp_path, cache):
    make_cifar(tmp_path, torchvision.datasets.CIFAR10)  # our batches: their md5s are not the official ones
    with pytest.raises(DatasetError) as err:
        data.cifar10(str(tmp_path), download=False)
    assert str(err.value).splitlines()[0] == (f"CIFAR10 not found: {tmp_path / 'cifar-10-batches-py'} is incomplete "
                                              "or damaged (a file is missing or its md5 differs).")


# ---------------------------------------------------------------------------- the event datasets' archives

def zip_folder(archive: Path, folder: Path, arcroot: str) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f"{arcroot}/{f.relative_to(folder).as_posix()}")


def test_nmnist_zips_placed_by_hand_are_read_and_the_folder_is_not_written(tmp_path, cache, monkeypatch):
    make_nmnist(tmp_path / "src", per_digit=1)
    (tmp_path / "data" / "NMNIST").mkdir(parents=True)
    for folder, archive in (("Train", "train.zip"), ("Test", "test.zip")):  # the official archives' names and tops
        zip_folder(tmp_path / "data" / "NMNIST" / archive, tmp_path / "src" / "NMNIST" / folder, folder)
    monkeypatch.setattr(NMNIST, "train_md5", md5(tmp_path / "data" / "NMNIST" / "train.zip"))  # as if official
    monkeypatch.setattr(NMNIST, "test_md5", md5(tmp_path / "data" / "NMNIST" / "test.zip"))
    before = snapshot(tmp_path / "data")
    splits = data.nmnist(str(tmp_path / "data"), download=True, T=2, workers=1)
    assert snapshot(tmp_path / "data") == before
    assert sorted(splits.train.labels.tolist()) == list(range(10)) and len(splits.test) == 10


def test_cifar10dvs_zip_of_class_zips_is_read_and_the_folder_is_not_written(tmp_path, cache, monkeypatch):
    classes = ("airplane", "cat", "truck")
    make_cifar10dvs(tmp_path / "src", classes=classes, per_class=4)
    for c in classes:  # CIFAR10DVS.zip holds one zip per class, each holding <class>/
        zip_folder(tmp_path / "src" / f"{c}.zip", tmp_path / "src" / "CIFAR10DVS" / c, c)
    (tmp_path / "data" / "CIFAR10DVS").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "data" / "CIFAR10DVS" / "CIFAR10DVS.zip", "w") as z:
        for c in classes:
            z.write(tmp_path / "src" / f"{c}.zip", f"{c}.zip")
    monkeypatch.setattr(CIFAR10DVS, "file_md5", md5(tmp_path / "data" / "CIFAR10DVS" / "CIFAR10DVS.zip"))
    before = snapshot(tmp_path / "data")
    splits = data.dvs_cifar10(str(tmp_path / "data"), download=False, T=1, downsample=8, workers=1)
    assert snapshot(tmp_path / "data") == before
    assert np.bincount(splits.train.labels, minlength=10)[[0, 3, 9]].tolist() == [3, 3, 3]  # 4 each: 1 to test


def test_dvs_gesture_tar_placed_by_hand_is_read_and_the_folder_is_not_written(tmp_path, cache, monkeypatch):
    make_gesture(tmp_path / "src")
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "DvsGesture.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "DvsGesture", arcname="DvsGesture")
    monkeypatch.setattr(events, "GESTURE_MD5", md5(tmp_path / "data" / "DvsGesture.tar.gz"))
    before = snapshot(tmp_path / "data")
    splits = data.dvs_gesture(str(tmp_path / "data"), download=False, T=2, downsample=8, workers=1)
    assert snapshot(tmp_path / "data") == before
    assert splits.train.labels.tolist() == [0, 4, 10] and splits.test.labels.tolist() == [0, 4, 10]


def test_a_damaged_archive_is_named(tmp_path, cache, monkeypatch):
    (tmp_path / "NMNIST").mkdir()
    (tmp_path / "NMNIST" / "train.zip").write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(NMNIST, "train_md5", md5(tmp_path / "NMNIST" / "train.zip"))  # past the md5 check
    with pytest.raises(CorruptFile, match=r"NMNIST/train.zip: cannot extract it \(File is not a zip file\): a "
                                          r"damaged or incomplete download\? Get it again"):
        data.nmnist(str(tmp_path), download=False)
    assert not [p for p in (cache / "extracted").iterdir() if p.is_dir()]  # nothing half extracted is left


# ------------------------------------------------------------------------------ a read-only data folder

@pytest.fixture
def read_only(tmp_path):
    """Runs a command with a folder bind-mounted read-only over itself, in a mount namespace of its own (root
    ignores permission bits, so a chmod would prove nothing). Skips where a mount namespace cannot be made."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'

    def under(folder: Path, *cmd):
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder), *cmd]

    probe = tmp_path / "probe"
    probe.mkdir()
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a read-only bind mount")
    proc = subprocess.run(under(probe, "touch", str(probe / "x")), capture_output=True, text=True)
    if "Read-only file system" not in proc.stderr:
        pytest.skip(f"cannot make a read-only bind mount here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    return under


def run_read_only(under, folder: Path, *args, cwd: Path, env: dict):
    return subprocess.run(under(folder, sys.executable, "-m", "snnexp", *args), cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)


STATIC_READ_ONLY = """
import sys, torchvision
from snnexp import data
mnist_md5s, cifar = eval(sys.argv[2]), torchvision.datasets.CIFAR10
torchvision.datasets.MNIST.resources = list(mnist_md5s.items())
cifar.train_list, cifar.test_list, cifar.meta, cifar.tgz_md5 = eval(sys.argv[3])
print(len(data.mnist(sys.argv[1], download=False).train), len(data.cifar10(sys.argv[1], download=True).test))
"""


def test_official_archives_are_read_from_a_read_only_folder(tmp_path, monkeypatch, read_only):
    place_mnist_gz(tmp_path / "src", tmp_path / "data", "MNIST", monkeypatch)
    cls = torchvision.datasets.CIFAR10
    place_cifar_tgz(tmp_path / "src", tmp_path / "data", cls, monkeypatch)
    mnist_md5s = dict(torchvision.datasets.MNIST.resources)
    cifar_md5s = (cls.train_list, cls.test_list, cls.meta, cls.tgz_md5)
    cmd = read_only(tmp_path / "data", sys.executable, "-c", STATIC_READ_ONLY, str(tmp_path / "data"),
                    repr(mnist_md5s), repr(cifar_md5s))
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SNNEXP_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0 and proc.stdout.split() == ["12", "4"], proc.stderr


@pytest.mark.slow  # 30-60 s: two CLI runs over the 70,000 real images
def test_real_mnist_gz_files_train_from_a_read_only_folder_and_a_writable_one_stays_unchanged(tmp_path, shared_data,
                                                                                            read_only):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (shared_data / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    env = {"SNNEXP_CACHE": str(tmp_path / "cache")}
    before = snapshot(tmp_path / "data")
    args = ["train", "dataset=mnist", f"dataset.data_dir={tmp_path / 'data'}", "trainer.T=2", "trainer.epochs=1",
            "trainer.max_steps=2", "trainer.batch_size=1000", "model=mlp", "hydra.run.dir=run"]
    ro = run_read_only(read_only, tmp_path / "data", *args, "dataset.download=false", cwd=tmp_path, env=env)
    assert ro.returncode == 0, ro.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 2
    run_snnexp(*args[:-1], "hydra.run.dir=writable", cwd=tmp_path, env=env)  # download=true (default): all there
    assert snapshot(tmp_path / "data") == before


EVENT_READ_ONLY = """
import sys
from tonic.datasets import NMNIST
from snnexp.cli import main
NMNIST.train_md5, NMNIST.test_md5 = sys.argv[1:3]  # our zips stand for the official ones
sys.argv = ["snnexp", *sys.argv[3:]]
main(sys.argv[1:])
"""


def test_event_archives_train_from_a_read_only_folder(tmp_path, read_only):
    make_nmnist(tmp_path / "src", per_digit=1)
    (tmp_path / "data" / "NMNIST").mkdir(parents=True)
    for folder, archive in (("Train", "train.zip"), ("Test", "test.zip")):
        zip_folder(tmp_path / "data" / "NMNIST" / archive, tmp_path / "src" / "NMNIST" / folder, folder)
    before = snapshot(tmp_path / "data")
    md5s = [md5(tmp_path / "data" / "NMNIST" / name) for name in ("train.zip", "test.zip")]
    cmd = read_only(tmp_path / "data", sys.executable, "-c", EVENT_READ_ONLY, *md5s, "train", "dataset=nmnist",
                    "dataset.data_dir=data", "dataset.cache_dir=cache", *TRAIN_STEP)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(tmp_path / "data") == before and (tmp_path / "run" / "metrics.json").is_file()


# ----------------------------------------------------------------------------------------- small subsets

def test_the_split_tests_every_class_of_two_or_more_recordings(tmp_path):
    counts = {0: 3, 1: 2, 2: 1, 3: 1000, 4: 25}  # recordings per class
    samples = [(str(tmp_path / str(c) / f"{i}.aedat"), c) for c, n in counts.items() for i in range(n)]
    lists = stratified_split(samples, 0.1, 0, tmp_path / "split.json", base=str(tmp_path))
    per_class = {c: [sum(label == c for _, label in lists[s]) for s in ("train", "test")] for c in counts}
    # 0.1 x 3 = 0.3 -> 1; 0.1 x 2 -> 1 (and 1 to train); 1 recording: train; 1000 -> 100; 25 -> 2.5 -> 2
    assert per_class == {0: [2, 1], 1: [1, 1], 2: [1, 0], 3: [900, 100], 4: [23, 2]}


def dvs_cifar10_run(data_dir: Path, cache: Path):
    cfg = compose_train("dataset=dvs_cifar10", f"dataset.data_dir={data_dir}", f"dataset.cache_dir={cache}",
                        "dataset.download=false", "dataset.downsample=8", "trainer.T=1", "model=mlp")
    return build_run(cfg, torch.device("cpu"))


def test_a_split_with_no_test_recording_stops_the_run_with_the_counts(tmp_path):
    make_cifar10dvs(tmp_path / "data", classes=("airplane", "cat"), per_class=1)
    splits = data.dvs_cifar10(str(tmp_path / "data"), download=False, T=1, cache_dir=str(tmp_path / "c"))
    assert (len(splits.train), len(splits.test)) == (2, 0)  # the loader gives what there is (one file decodes)
    with pytest.raises(DatasetError) as err:
        dvs_cifar10_run(tmp_path / "data", tmp_path / "c")
    assert str(err.value) == ("the split (dataset.test_fraction=0.1) leaves the test set empty: 2 train / 0 test "
                              "recordings (airplane: 1 train / 0 test, cat: 1 train / 0 test); a class needs 2 or "
                              "more recordings to give one to each set: add recordings to dataset.data_dir")


def test_a_stored_split_that_leaves_the_test_set_empty_says_to_delete_it(tmp_path):
    make_cifar10dvs(tmp_path / "data", classes=("airplane", "cat"), per_class=1)
    data.dvs_cifar10(str(tmp_path / "data"), download=False, T=1, cache_dir=str(tmp_path / "c"))  # stored: all train
    make_cifar10dvs(tmp_path / "more", classes=("airplane", "cat"), per_class=1, seed=1)
    for f in (tmp_path / "more").rglob("*.aedat"):  # one more recording a class: split alone, it trains
        f.rename(tmp_path / "data" / f.relative_to(tmp_path / "more").with_name("extra.aedat"))
    (store,) = (tmp_path / "c").glob("dvs_cifar10-split-*.json")
    with pytest.raises(DatasetError) as err:
        dvs_cifar10_run(tmp_path / "data", tmp_path / "c")
    assert str(err.value).endswith(f"(airplane: 2 train / 0 test, cat: 2 train / 0 test); the split stored in {store} "
                                   "(made when there were fewer recordings, or by an older snnexp) is reused: "
                                   "delete it to split again")
    store.unlink()
    run = dvs_cifar10_run(tmp_path / "data", tmp_path / "c")
    assert (len(run.splits.train), len(run.splits.test)) == (2, 2)


def test_three_recordings_per_class_train_and_test_through_the_cli(tmp_path):
    make_cifar10dvs(tmp_path / "data", per_class=3)
    run_snnexp("train", "dataset=dvs_cifar10", "dataset.cache_dir=cache", "dataset.download=false",
               "dataset.downsample=8", *TRAIN_STEP, cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (store,) = (tmp_path / "cache").glob("dvs_cifar10-split-*.json")
    assert len(json.loads(store.read_text())["test"]) == 3 and 0 <= metrics["test_acc"] <= 1


def test_evaluate_on_an_empty_test_set_is_a_clear_error(tmp_path):
    cfg = compose_train("model=mlp", "trainer.T=2")
    run = build_run(cfg, torch.device("cpu"))
    with pytest.raises(DatasetError, match="the test set is empty: there is nothing to test"):
        evaluate(run, make_loader(Subset(run.splits.test, []), cfg))


# ------------------------------------------------------------------------------- links in the data folder

class StillListing(Exception):
    """Not an OSError (as TimeoutError is), which os.walk would swallow."""


def within(seconds: int, load):
    """load(), stopped by StillListing after `seconds` (a listing that would not end)."""
    def stop(signum, frame):
        raise StillListing(f"still listing after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        return load()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


LOOPS = {"Train/0/back": "..", "Train/1/up": "../.."}  # back to Train/; up to NMNIST/, which holds Test/ too


@pytest.mark.parametrize("loops", [1, 2])
def test_a_symlink_loop_in_the_data_folder_lists_each_file_once_with_a_warning(tmp_path, caplog, loops):
    """One loop listed every training file 41 times (until the 40 links' limit), two never ended. Each loop is
    named once; a folder linked in from elsewhere is still read."""
    make_nmnist(tmp_path, per_digit=2)
    root = tmp_path / "NMNIST"
    shutil.move(root / "Test" / "9", tmp_path / "nine")
    (root / "Test" / "9").symlink_to(tmp_path / "nine")
    links = dict(list(LOOPS.items())[:loops])
    for link, target in links.items():
        (root / link).symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="snnexp"):
        splits = within(20, lambda: data.nmnist(str(tmp_path), download=False, T=2, workers=1,
                                                cache_dir=str(tmp_path / "cache")))
    assert len(splits.train) == 20 and len(splits.test) == 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == loops
    for warning, (link, target) in zip(warnings, links.items()):
        assert warning.startswith(f"{root / link} leads to {(root / link).resolve()}, a folder already listed or "
                                  f"one that holds {root / 'Train'}: left out, so that each file is counted once")


# ---------------------------------------------------------------------------------- TensorBoard writes

def fail_appends_after(monkeypatch, n: int) -> None:
    """A full disk at tensorboard's file layer (LocalFileSystem.append: every event after the file's first
    chunk): the first n appends succeed, the rest raise ENOSPC, in the writer's own thread."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    calls, real = [0], gfile.LocalFileSystem.append

    def append(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gfile.LocalFileSystem, "append", append)


def test_a_full_disk_at_a_tensorboard_write_is_our_error_and_the_epoch_is_saved(tmp_path, monkeypatch, capfd):
    from snnexp.train import checkpoint

    fail_appends_after(monkeypatch, 1)  # the hparams session start is written; the first epoch's scalars are not
    with pytest.raises(CheckpointError) as err:
        fit(compose_train("model=mlp", "trainer.T=2", "trainer.epochs=2"), tmp_path, hparams={"x": 1})
    assert str(err.value) == (f"cannot write TensorBoard events in {tmp_path}: No space left on device (free disk "
                              "space, or give hydra.run.dir=... elsewhere)")
    assert err.value.exit_code == 2
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1  # written before the failing write
    assert json.loads((tmp_path / "metrics.json").read_text())["epoch"] == 1
    assert "Traceback" not in capfd.readouterr().err  # the writer thread's own report is silenced


def test_a_tensorboard_write_that_fails_at_close_is_our_error(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path)
    logger.start({"x": 1})
    logger.scalars({"loss": 1.0}, 1)
    fail_appends_after(monkeypatch, 0)
    with pytest.raises(CheckpointError, match=f"cannot write TensorBoard events in {tmp_path}: No space left"):
        logger.close(success=True)


def test_a_failing_close_does_not_hide_the_error_the_run_stopped_with(tmp_path, monkeypatch, caplog):
    with pytest.raises(ValueError, match="the run's own error"):
        with RunLogger(tmp_path) as logger:
            logger.start({"x": 1})
            fail_appends_after(monkeypatch, 0)
            logger.writer.add_scalar("loss", 1.0, 1)  # queued; the close's flush meets the full disk
            raise ValueError("the run's own error")
    assert "cannot write TensorBoard events" in caplog.text
