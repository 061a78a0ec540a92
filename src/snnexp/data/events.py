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
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from snnexp.data.cache import FrameCache, default_cache_dir, extracted
from snnexp.data.frames import events_to_frames
from snnexp.data.static import Splits
from snnexp.errors import CorruptFile, DatasetError  # noqa: F401 (CorruptFile: importable from here, as before)
from snnexp.files import write_json_atomic

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
# Options: the flat keywords of the loaders, in three groups


@dataclass(frozen=True)
class FrameOptions:
    """What changes the frames (tonic's ToFrame, after its Denoise): T frames per sample, cut by equal event
    counts (split_by="number") or by time ("time": bins of bin_ms, or T equal slices when bin_ms is None),
    d x d pixel blocks summed (downsample = d), events with no neighbour within denoise_ms dropped first."""

    T: int = 10
    split_by: str = "number"
    bin_ms: Optional[float] = None
    downsample: int = 1
    denoise_ms: Optional[float] = None

    def shape(self, sensor_size) -> Tuple[int, int, int, int]:
        """[T, 2, H, W] of one sample from a (W, H) sensor."""
        h, w = (-(-s // self.downsample) for s in sensor_size[::-1])
        return self.T, 2, h, w


@dataclass(frozen=True)
class CacheOptions:
    """Where and how the frames are cached (as tonic's DiskCachedDataset): cache_dir (None: default_cache_dir()),
    workers converting (None: all cores), on_corrupt "error" (stop at a corrupt file) or "skip" (leave it out)."""

    cache_dir: Optional[str] = None
    workers: Optional[int] = None
    on_corrupt: str = "error"

    def root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


@dataclass(frozen=True)
class Augment:
    """Training-frame augmentation (FrameDataset): a random horizontal flip, a random translation by up to
    roll pixels. The test split is never augmented."""

    flip: bool = False
    roll: int = 0


OPTION_GROUPS = (FrameOptions, CacheOptions, Augment)


def event_options(loader: str, options: dict, groups=OPTION_GROUPS, **defaults) -> tuple:
    """A loader's flat keyword options (`defaults` under them) as the option groups (dataclasses: by default
    FrameOptions, CacheOptions, Augment); an unknown name is a TypeError that names it and lists the options."""
    names = [f.name for group in groups for f in fields(group)]
    unknown = [k for k in options if k not in names]
    if unknown:
        raise TypeError(f"{loader}() got an unexpected keyword argument {unknown[0]!r}; its options are "
                        f"{', '.join(names)}")
    options = {**defaults, **options}
    return tuple(group(**{f.name: options[f.name] for f in fields(group) if f.name in options}) for group in groups)


class ToFrames:
    """source -> frames [T, 2, H, W] as `frames` says; a picklable callable for the cache's worker processes."""

    def __init__(self, sensor_size, frames: FrameOptions):
        self.sensor_size, self.frames = tuple(sensor_size), frames

    def __call__(self, source):
        x, y, t, p = read_source(source)
        o = self.frames
        if o.denoise_ms:
            from tonic.functional import denoise_numpy
            from tonic.io import make_structured_array

            ev = denoise_numpy(make_structured_array(x, y, t, p), filter_time=o.denoise_ms * 1000)
            x, y, t, p = ev["x"], ev["y"], ev["t"], ev["p"]
        return events_to_frames(x, y, t, p, self.sensor_size, o.T, o.split_by, o.bin_ms, o.downsample)


# ---------------------------------------------------------------------------------------------------
# The torch Dataset over a cache


class FrameDataset(Dataset):
    """(frames float32 [T, ...], label) from a FrameCache ([T, 2, H, W] events, [T, C] spike trains), with optional
    frame augmentation of event frames:
    a random horizontal flip and a random translation by up to `roll` pixels (wrapping around)."""

    def __init__(self, cache_dir: Path, flip: bool = False, roll: int = 0):
        self.cache_dir, self.flip, self.roll = Path(cache_dir), flip, int(roll)
        self.labels = np.load(self.cache_dir / "labels.npy")
        self._frames = None  # opened lazily, so that DataLoader workers each map the file themselves

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self._frames is None:
            self._frames = np.load(self.cache_dir / "frames.npy", mmap_mode="r")
        x = torch.from_numpy(self._frames[i].astype(np.float32))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.roll:
            dy, dx = torch.randint(-self.roll, self.roll + 1, (2,)).tolist()
            x = x.roll((dy, dx), dims=(-2, -1))
        return x, int(self.labels[i])


# ---------------------------------------------------------------------------------------------------
# The three datasets


def _build_splits(name, data_dir, lists, sensor_size, num_classes, frames: FrameOptions, cache: CacheOptions,
                  augment: Augment) -> Splits:
    """lists: {"train": [(source, label)], "test": [...]} -> a FrameCache per split, read by FrameDatasets."""
    convert, shape = ToFrames(sensor_size, frames), frames.shape(sensor_size)
    datasets = {}
    for split, samples in lists.items():
        sources = [s for s, _ in samples]
        # the cache's key: keep this dict as it is, or every cache already built is orphaned and built again
        key = {"dataset": name, "split": split, "T": frames.T, "split_by": frames.split_by,
               "bin_ms": frames.bin_ms if frames.split_by == "time" else None, "sensor_size": list(sensor_size),
               "downsample": frames.downsample, "denoise_ms": frames.denoise_ms, "on_corrupt": cache.on_corrupt,
               "files": _digest(sources, data_dir)}
        built = FrameCache(cache.root(), key)
        built.get_or_build(sources, [label for _, label in samples], convert, shape, cache.workers, cache.on_corrupt,
                           desc=f"{name} {split}: events -> {frames.T} frames", num_classes=num_classes)
        aug = augment if split == "train" else Augment()
        datasets[split] = FrameDataset(built.dir, flip=aug.flip, roll=aug.roll)
    return Splits(datasets["train"], datasets["test"], shape[1:], num_classes, sequence=True)


def _digest(sources, data_dir) -> str:
    """Which files (relative to data_dir), their sizes and modification times: a changed, added or
    removed file gives a new cache."""
    h = hashlib.sha256()
    for s in sources:
        path, rest = (s[0], s[1:]) if isinstance(s, tuple) else (s, ())
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, data_dir)}|{st.st_size}|{st.st_mtime_ns}|{rest}\n".encode())
    return h.hexdigest()[:16]


def _missing(name, folder: Path, layout: str, files: str, source: str, err: Optional[Exception] = None,
             download: Optional[bool] = None):
    """The message of a dataset not found: where it was looked for, the layout, the files and where to get them;
    why the download did not help (it failed with `err`, or `download` is False)."""
    why = f" and the download failed ({err})" if err else ""
    if not err and download is False:
        why = " (dataset.download=false; dataset.download=true fetches what is missing with tonic)"
    return DatasetError(
        f"{name} not found in {folder}{why}.\n"
        f"Expected layout:\n{layout}\n"
        f"Get it from {source}:\n{files}\n"
        f"Put the extracted files or the archive(s) in {folder}/, or point dataset.data_dir at the folder "
        f"that holds {folder.name}/."
    )


def _sorted_files(folder: Path, suffixes) -> List[Path]:
    """Files with these suffixes under folder, in sorted order. Linked folders are followed (a data folder may link
    its recordings in from elsewhere), but each real folder is entered once: a link back up the tree (a loop) would
    list every file again, up to 40 times, and two loops without end. A link that leads to a folder already listed,
    or to one that holds `folder` (which would list it again, and its neighbours: Test/ among the training files),
    is left out, with a warning naming it. (The one walk of a data folder: every loader lists files through this.)"""
    real_folder = folder.resolve()
    seen = {_identity(p) for p in (real_folder, *real_folder.parents)}
    found = []
    for d, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()  # which of two links to one folder is kept does not depend on the order the disk lists them
        for name in list(dirs):
            path, real = Path(d, name), _identity(Path(d, name))
            if real in seen:
                log.warning("%s leads to %s, a folder already listed or one that holds %s: left out, so that each "
                            "file is counted once (a symbolic link loop?)", path, path.resolve(), folder)
                dirs.remove(name)
            seen.add(real)
        found += [Path(d, f) for f in files if Path(f).suffix in suffixes]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _identity(folder: Path) -> Tuple[int, int]:
    """The real folder that `folder` is (links followed): its device and inode."""
    st = os.stat(folder)
    return st.st_dev, st.st_ino


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
        files = _sorted_files(where, {".bin"}) if where.is_dir() else []
        if not files:
            raise _nmnist_missing(root)
        lists[split] = [(str(f), int(f.parent.name)) for f in files]
    return _build_splits("nmnist", data_dir, lists, NMNIST.sensor_size[:2], 10, frames, cache, augment)


NMNIST_SOURCE = "https://www.garrickorchard.com/datasets/n-mnist"


def _nmnist_missing(root, err=None):
    from tonic.datasets import NMNIST

    return _missing(
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
            samples += [(str(f), label) for f in _sorted_files(folder / c, {".aedat", ".aedat4"})]
    if not samples:
        raise _cifar10dvs_missing(root)
    store = cache.root() / f"dvs_cifar10-split-seed{split_seed}-test{test_fraction}.json"
    lists = stratified_split(samples, test_fraction, split_seed, store, base=str(folder))
    splits = _build_splits("dvs_cifar10", data_dir, lists, (128, 128), 10, frames, cache, augment)
    splits.empty_reason = split_problem(lists, test_fraction, store, CIFAR10DVS_CLASSES)
    return splits


def _cifar10dvs_missing(root, err=None):
    from tonic.datasets import CIFAR10DVS

    return _missing(
        "CIFAR10-DVS", root,
        f"  {root}/<class>/*.aedat4 (tonic's release) or {root}/<class>/*.aedat (the original AEDAT 2.0 release),\n"
        f"  <class> one of {', '.join(CIFAR10DVS_CLASSES)}",
        f"  {CIFAR10DVS.filename}  md5 {CIFAR10DVS.file_md5}  (10 class zips, 1,000 recordings each)",
        f"{CIFAR10DVS.url} (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671)", err)


def stratified_split(samples: Sequence[Tuple[str, int]], test_fraction: float, seed: int, store: Path, base: str):
    """Per class: a seeded permutation of the sorted files, the first n_test for test (_test_count: about
    test_fraction of them, and at least one test and one training recording for a class of 2 or more).
    The assignment is stored (paths relative to `base`) and reused, so a file never moves between train
    and test; files that appear later are split among themselves the same way. A set left empty (every class a
    single recording) is returned as it is: split_problem says why, for the error that stops a run."""
    stored = json.loads(store.read_text()) if store.is_file() else {"train": [], "test": []}
    known = {rel: split for split in ("train", "test") for rel in stored[split]}
    new_by_class = {}
    for path, label in samples:
        rel = os.path.relpath(path, base)
        if rel not in known:
            new_by_class.setdefault(label, []).append(rel)
    rng = np.random.default_rng(seed)
    for label in sorted(new_by_class):
        rels = sorted(new_by_class[label])
        order = rng.permutation(len(rels))
        n_test = _test_count(test_fraction, len(rels))
        for j, idx in enumerate(order):
            known[rels[idx]] = "test" if j < n_test else "train"
    lists = {"train": [], "test": []}
    for path, label in samples:
        lists[known[os.path.relpath(path, base)]].append((path, label))
    if new_by_class:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(store, {s: sorted(r for r, v in known.items() if v == s) for s in ("train", "test")})
    return lists


def _test_count(test_fraction: float, n: int) -> int:
    """How many of a class's n recordings go to the test set: round(test_fraction * n), but at least 1 and at
    most n - 1 when n >= 2, so that a small subset (3 recordings a class: 0.3 rounds to 0) still tests every
    class; a class of one recording trains."""
    return min(max(int(round(test_fraction * n)), 1), n - 1) if n >= 2 else 0


def split_problem(lists, test_fraction: float, store: Path, classes: Sequence[str]) -> str:
    """Why the split leaves the training or test set empty, with the counts per class ('' when it does not):
    too few recordings, or a stored split made when there were fewer (or by an older snnexp)."""
    if lists["train"] and lists["test"]:
        return ""
    counts = {}
    for split, samples in lists.items():
        for _, label in samples:
            counts.setdefault(label, {"train": 0, "test": 0})[split] += 1
    per_class = ", ".join(f"{classes[label]}: {c['train']} train / {c['test']} test"
                          for label, c in sorted(counts.items()))
    if any(_test_count(test_fraction, c["train"] + c["test"]) for c in counts.values()):
        fix = (f"the split stored in {store} (made when there were fewer recordings, or by an older snnexp) is "
               "reused: delete it to split again")
    else:
        fix = "a class needs 2 or more recordings to give one to each set: add recordings to dataset.data_dir"
    return (f"the split (dataset.test_fraction={test_fraction}) leaves the {'test' if lists['train'] else 'training'} "
            f"set empty: {len(lists['train'])} train / {len(lists['test'])} test recordings ({per_class}); {fix}")


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
        lists = {split: [(str(f), int(f.stem)) for f in _sorted_files(tonic_dir / folder, {".npy"})]
                 for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest"))}
    return _build_splits("dvs_gesture", data_dir, lists, (128, 128), 11, frames, cache, augment)


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
    return _missing(
        "DVS128 Gesture", folder,
        f"  {folder}/user<NN>_<lighting>.aedat with user<NN>_<lighting>_labels.csv beside each,\n"
        f"  and trials_to_train.txt / trials_to_test.txt (else users 1-23 train, 24-29 test)",
        f"  DvsGesture.tar.gz  md5 {GESTURE_MD5}  (122 recordings, 29 users, 11 gestures);\n"
        "  put it in the folder that holds DvsGesture/ (dataset.data_dir)", GESTURE_SOURCE, err)
