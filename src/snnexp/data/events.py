"""Event-camera datasets: N-MNIST, CIFAR10-DVS and DVS128 Gesture, read with tonic's readers, turned
into T frames [2, H, W] per sample (frames.py) and stored once in a FrameCache (cache.py).

Data is taken as the user has it, under `data_dir`:
- the extracted folders (N-MNIST `NMNIST/{Train,Test}/<digit>/*.bin`, CIFAR10-DVS
  `CIFAR10DVS/<class>/*.aedat4 or *.aedat`, DVS128 Gesture `DvsGesture/user*.aedat` with their
  `_labels.csv`), complete or with fewer files than the full set;
- the official archives placed by hand beside them (extracted on first use into the cache, under
  `<cache root>/extracted/`: the data folder is only read, and may be read-only);
- tonic's download, when online and `download: true`.
Samples are listed in sorted order, the same on every machine.

Each loader takes `data_dir` and `download`, then its options as flat keywords (the keys of
conf/dataset/<name>.yaml), grouped here as tonic groups a frame transform and a disk cache:
FrameOptions (what changes the frames: T, split_by, bin_ms, downsample, denoise_ms), CacheOptions
(cache_dir, workers, on_corrupt) and Augment (flip, roll: training frames only).
"""

import csv
import logging
import re
from pathlib import Path

from snnexp.data.archives import extracted
from snnexp.data.recordings import (
    build_splits,
    event_options,
    missing_error,
    sorted_files,
    split_problem,
    stratified_split,
)
from snnexp.data.static import Splits
from snnexp.errors import CorruptFile, DatasetError  # noqa: F401 (CorruptFile: importable from here, as before)

log = logging.getLogger("snnexp")

# the readers moved to readers.py; their names stay importable from here
from snnexp.data.readers import (  # noqa: E402, F401
    READERS,
    Events,
    read_aedat2_dvs128,
    read_aedat4_events,
    read_aedat31_polarity,
    read_gesture_slice,
    read_nmnist,
    read_source,
    read_tonic_gesture_npy,
)

# ---------------------------------------------------------------------------------------------------
# The torch Dataset over a cache




# ---------------------------------------------------------------------------------------------------
# The three datasets












def nmnist(data_dir="data", download=True, **options) -> Splits:
    """N-MNIST (Orchard 2015): 34x34 sensor, 10 classes, 60,000 / 10,000 recordings. `options`: the fields of
    FrameOptions (T=10 frames by default), CacheOptions and Augment."""
    from tonic.datasets import NMNIST

    frames, cache, augment = event_options("nmnist", options)
    root = Path(data_dir).expanduser() / "NMNIST"
    lists = {}
    for split, folder, archive, md5 in (("train", "Train", NMNIST.train_filename, NMNIST.train_md5),
                                        ("test", "Test", NMNIST.test_filename, NMNIST.test_md5)):
        where = root / folder
        if not where.is_dir() and (root / archive).is_file():
            where = extracted({root / archive: md5}, cache.root(), "NMNIST", NMNIST_SOURCE) / folder
        if not where.is_dir() and download:
            try:
                NMNIST(str(Path(data_dir).expanduser()), train=split == "train")
            except Exception as e:
                raise _nmnist_missing(root, e) from None
        files = sorted_files(where, {".bin"}) if where.is_dir() else []
        if not files:
            raise _nmnist_missing(root)
        lists[split] = [(str(f), int(f.parent.name)) for f in files]
    return build_splits("nmnist", data_dir, lists, NMNIST.sensor_size[:2], 10, frames, cache, augment)


NMNIST_SOURCE = "https://www.garrickorchard.com/datasets/n-mnist"


def _nmnist_missing(root, err=None):
    from tonic.datasets import NMNIST

    return missing_error(
        "N-MNIST", root,
        f"  {root}/Train/<digit 0-9>/<n>.bin   and   {root}/Test/<digit 0-9>/<n>.bin",
        f"  {NMNIST.train_filename}  md5 {NMNIST.train_md5}  (60,000 training recordings)\n"
        f"  {NMNIST.test_filename}   md5 {NMNIST.test_md5}  (10,000 test recordings)",
        f"{NMNIST.train_url} and {NMNIST.test_url} ({NMNIST_SOURCE})", err)


CIFAR10DVS_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dvs_cifar10(data_dir="data", download=True, test_fraction=0.1, split_seed=0, **options) -> Splits:
    """CIFAR10-DVS (Li 2017): 128x128 sensor, 10 classes, 1,000 recordings each, no official split: a
    seeded, class-stratified split (test_fraction of each class), stored beside the cache and reused.
    `options`: the fields of FrameOptions (T=10 frames by default), CacheOptions and Augment."""
    from tonic.datasets import CIFAR10DVS

    frames, cache, augment = event_options("dvs_cifar10", options)
    root = Path(data_dir).expanduser() / "CIFAR10DVS"
    folder = root  # the class folders: extracted there by the user, or from the archive(s) there into the cache
    if not any((root / c).is_dir() for c in CIFAR10DVS_CLASSES):
        # tonic's CIFAR10DVS.zip (its md5 known) holds one zip per class; the original release's class zips have none
        archives = {root / CIFAR10DVS.filename: CIFAR10DVS.file_md5} if (root / CIFAR10DVS.filename).is_file() else \
            {root / f"{c}.zip": None for c in CIFAR10DVS_CLASSES if (root / f"{c}.zip").is_file()}
        if archives:
            folder = extracted(archives, cache.root(), "CIFAR10DVS", CIFAR10DVS.url, nested=True)
    if not any((folder / c).is_dir() for c in CIFAR10DVS_CLASSES) and download:
        try:
            CIFAR10DVS(str(Path(data_dir).expanduser()))
        except Exception as e:
            raise _cifar10dvs_missing(root, e) from None
        folder = root
    samples = []
    for label, c in enumerate(CIFAR10DVS_CLASSES):
        if (folder / c).is_dir():
            samples += [(str(f), label) for f in sorted_files(folder / c, {".aedat", ".aedat4"})]
    if not samples:
        raise _cifar10dvs_missing(root)
    store = cache.root() / f"dvs_cifar10-split-seed{split_seed}-test{test_fraction}.json"
    lists = stratified_split(samples, test_fraction, split_seed, store, base=str(folder))
    splits = build_splits("dvs_cifar10", data_dir, lists, (128, 128), 10, frames, cache, augment)
    splits.empty_reason = split_problem(lists, test_fraction, store, CIFAR10DVS_CLASSES)
    return splits


def _cifar10dvs_missing(root, err=None):
    from tonic.datasets import CIFAR10DVS

    return missing_error(
        "CIFAR10-DVS", root,
        f"  {root}/<class>/*.aedat4 (tonic's release) or {root}/<class>/*.aedat (the original AEDAT 2.0 release),\n"
        f"  <class> one of {', '.join(CIFAR10DVS_CLASSES)}",
        f"  {CIFAR10DVS.filename}  md5 {CIFAR10DVS.file_md5}  (10 class zips, 1,000 recordings each)",
        f"{CIFAR10DVS.url} (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671)", err)








GESTURE_TRAIN_USERS = range(1, 24)  # the official split: users 1-23 train, 24-29 test
GESTURE_MD5 = "8a5c71fb11e24e5ca5b11866ca6c00a1"  # of IBM's DvsGesture.tar.gz
GESTURE_SOURCE = "https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794 (IBM DVS128 Gesture)"


def dvs_gesture(data_dir="data", download=True, **options) -> Splits:
    """DVS128 Gesture (Amir 2017): 128x128 sensor, 11 classes. The official release (`DvsGesture/`:
    AEDAT 3.1 recordings, one `_labels.csv` each, trials_to_train.txt / trials_to_test.txt), or tonic's
    download (`DVSGesture/ibmGesture{Train,Test}/<user>_<lighting>/<class>.npy`). `options`: the fields of
    FrameOptions (T=20 frames by default), CacheOptions and Augment."""
    from tonic.datasets import DVSGesture

    frames, cache, augment = event_options("dvs_gesture", options, T=20)
    base = Path(data_dir).expanduser()
    official, tonic_dir = base / "DvsGesture", base / "DVSGesture"
    if not official.is_dir() and (base / "DvsGesture.tar.gz").is_file():
        official = extracted({base / "DvsGesture.tar.gz": GESTURE_MD5}, cache.root(), "DvsGesture",
                             GESTURE_SOURCE) / "DvsGesture"
    if official.is_dir() and any(official.glob("*.aedat")):
        lists = _gesture_official(official)
    else:
        if not (tonic_dir / "ibmGestureTrain").is_dir() and download:
            try:
                DVSGesture(str(base), train=True)
                DVSGesture(str(base), train=False)
            except Exception as e:
                raise _gesture_missing(base / "DvsGesture", e) from None
        if not (tonic_dir / "ibmGestureTrain").is_dir():
            raise _gesture_missing(base / "DvsGesture")
        lists = {split: [(str(f), int(f.stem)) for f in sorted_files(tonic_dir / folder, {".npy"})]
                 for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest"))}
    return build_splits("dvs_gesture", data_dir, lists, (128, 128), 11, frames, cache, augment)


def _gesture_official(folder: Path):
    trials = {}
    for split in ("train", "test"):
        listing = folder / f"trials_to_{split}.txt"
        if listing.is_file():
            trials[split] = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
    lists = {"train": [], "test": []}
    for rec in sorted(folder.glob("*.aedat")):
        labels = rec.with_name(rec.stem + "_labels.csv")
        if not labels.is_file():
            raise DatasetError(f"{rec} has no label file {labels.name} beside it")
        if trials:
            split = next((s for s in ("train", "test") if rec.name in trials.get(s, ())), None)
            if split is None:
                continue
        else:
            m = re.match(r"user(\d+)_", rec.name)
            if not m:
                raise DatasetError(f"{rec}: expected a name like user01_fluorescent.aedat")
            split = "train" if int(m.group(1)) in GESTURE_TRAIN_USERS else "test"
        with open(labels, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    cls, start, end = int(row["class"]), int(row["startTime_usec"]), int(row["endTime_usec"])
                except (KeyError, ValueError):
                    raise DatasetError(f"{labels}: expected columns class,startTime_usec,endTime_usec") from None
                if not 1 <= cls <= 11:
                    raise DatasetError(f"{labels}: class {cls} outside 1..11")
                lists[split].append(((str(rec), start, end), cls - 1))
    return lists


def _gesture_missing(folder, err=None):
    return missing_error(
        "DVS128 Gesture", folder,
        f"  {folder}/user<NN>_<lighting>.aedat with user<NN>_<lighting>_labels.csv beside each,\n"
        f"  and trials_to_train.txt / trials_to_test.txt (else users 1-23 train, 24-29 test)",
        f"  DvsGesture.tar.gz  md5 {GESTURE_MD5}  (122 recordings, 29 users, 11 gestures);\n"
        "  put it in the folder that holds DvsGesture/ (dataset.data_dir)", GESTURE_SOURCE, err)
