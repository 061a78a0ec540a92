"""Audio spike datasets: the Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC) of Cramer et al.
(2020), spoken words turned into spikes of 700 channels by a model of the inner ear (one channel per place
along the cochlea, low to high frequencies).

The files as their authors publish them (and as tonic downloads them), under `data_dir`:

    SHD/shd_train.h5  SHD/shd_test.h5                     20 classes: digits 0-9 in English and German
    SSC/ssc_train.h5  SSC/ssc_valid.h5  SSC/ssc_test.h5   35 classes: Speech Commands words

each an HDF5 file of N samples: `spikes/times[i]` (the sample's spike times in seconds, float16, non-decreasing),
`spikes/units[i]` (the channel 0..699 of each of those spikes), `labels[i]`; `extra/` (speakers, class names) is
not read here. A file that is missing but has its archive beside it (`<name>.h5.gz` from the authors' site, or
`<name>.h5.zip` from tonic's mirror) is decompressed once into the cache (`<cache root>/extracted/`): the data
folder is only read. With download=True, tonic's SHD and SSC classes fetch what is still missing into
`<data_dir>/SHD/` (`SSC/`), as they would for tonic itself.

Each sample becomes T frames [C] of spike counts (frames.channel_frames; docs/science.md, section 6, audio): bins of
bin_ms from the start of the recording, t = 0 (spikes after T bins are dropped, a shorter sample ends in empty
frames), or, with bin_ms=None, the sample's own [0, last spike] cut into T equal slices; channels = C < 700 sums
700 / C neighbouring channels. Each split is converted once into a FrameCache, keyed by all of these.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from snnexp.data.archives import extracted
from snnexp.data.cache import FrameCache
from snnexp.data.frames import channel_frames
from snnexp.data.recordings import CacheOptions, FrameDataset, event_options, missing_error, source_digest
from snnexp.data.static import Splits
from snnexp.errors import ConfigError, CorruptFile

log = logging.getLogger("snnexp")

CHANNELS = 700  # the cochlea model's channels in both datasets
FIELDS = ("spikes/times", "spikes/units", "labels")


@dataclass(frozen=True)
class SpikeTrainFrames:
    """What changes the frames of a spike train: T frames, bins of bin_ms from t = 0 (None: T equal slices of each
    sample's [0, last spike]), channels kept (700, or 700 / k: k neighbouring channels summed)."""

    T: int = 100
    bin_ms: Optional[float] = 10.0
    channels: int = CHANNELS

    def shape(self):
        return self.T, self.channels


@dataclass(frozen=True)
class Release:
    """One dataset as published: its folder under data_dir, its files by split, tonic's class and md5s."""

    name: str  # the loader's name and the cache's
    folder: str  # <data_dir>/<folder>/, as tonic places it (tonic's class name)
    num_classes: int
    splits: tuple

    def file(self, split: str) -> str:
        return f"{self.name}_{split}.h5"

    def tonic_class(self):
        from tonic.datasets import SHD, SSC

        return {"SHD": SHD, "SSC": SSC}[self.folder]

    def fetch(self, base: Path, split: str) -> None:
        """tonic's download of one split's zip into <base>/<folder>/, extracted there."""
        cls = self.tonic_class()
        if self.folder == "SHD":
            cls(str(base), train=split == "train")
        else:
            cls(str(base), split=split)


SHD = Release("shd", "SHD", 20, ("train", "test"))
SSC = Release("ssc", "SSC", 35, ("train", "valid", "test"))


def shd(data_dir="data", download=True, **options) -> Splits:
    """The Spiking Heidelberg Digits: 8,156 training / 2,264 test recordings of 20 classes (the digits 0-9 spoken
    in English and German), 700 channels. `options`: the fields of SpikeTrainFrames (T, bin_ms, channels) and
    CacheOptions (cache_dir, workers, on_corrupt)."""
    return _load(SHD, data_dir, download, {"train": "train", "test": "test"}, options)


def ssc(data_dir="data", download=True, test_split="test", val_fraction=0.0, **options) -> Splits:
    """The Spiking Speech Commands: 75,466 training / 9,981 validation / 20,382 test recordings of 35 words,
    700 channels. `test_split`: the set a run evaluates after every epoch, "test" (the official test set) or
    "valid" (the validation set, to choose settings without looking at the test set). `val_fraction` > 0: the
    official validation set is the run's validation set (data.validation; its size is the release's, whatever the
    fraction), beside the test set. `options`: as shd()."""
    if test_split not in ("test", "valid"):
        raise ConfigError(f"dataset.test_split={test_split!r} is out of range: must be test or valid")
    if not val_fraction:
        return _load(SSC, data_dir, download, {"train": "train", "test": test_split}, options)
    if test_split == "valid":
        raise ConfigError("dataset.val_fraction > 0 makes SSC's validation set the run's validation set, and "
                          "dataset.test_split=valid tests on it too: use dataset.test_split=test with it")
    log.info("SSC: dataset.val_fraction=%s: its official validation set is the validation set", val_fraction)
    return _load(SSC, data_dir, download, {"train": "train", "test": "test", "val": "valid"}, options)


def _load(release: Release, data_dir, download, roles: Dict[str, str], options) -> Splits:
    """roles: {"train": split, "test": split[, "val": split]} -> a FrameCache per split file, read by
    FrameDatasets."""
    frames, cache = event_options(release.name, options, groups=(SpikeTrainFrames, CacheOptions))
    if frames.channels < 1 or CHANNELS % frames.channels:
        raise ConfigError(f"dataset.channels={frames.channels} is out of range: must divide {CHANNELS} "
                          "(700, 350, 175, 140, 100, 70, ...: 700 / channels neighbours summed)")
    splits = [split for split in release.splits if split in roles.values()]
    paths = _locate(release, Path(data_dir).expanduser(), splits, cache, download)
    convert = ReadSample(frames, release.num_classes)
    datasets = {}
    for role, split in roles.items():
        path = paths[split]
        labels = _labels(path)
        # the cache's key: keep this dict as it is, or every cache already built is orphaned and built again
        key = {"dataset": release.name, "split": split, "T": frames.T, "bin_ms": frames.bin_ms,
               "channels": frames.channels, "on_corrupt": cache.on_corrupt,
               "files": source_digest([str(path)], data_dir)}
        built = FrameCache(cache.root(), key)
        built.get_or_build([(str(path), i) for i in range(len(labels))], labels, convert, frames.shape(),
                           cache.workers, cache.on_corrupt, desc=f"{release.name} {split}: spikes -> {frames.T} frames",
                           num_classes=release.num_classes)
        datasets[role] = FrameDataset(built.dir)
    return Splits(datasets["train"], datasets["test"], (frames.channels,), release.num_classes, sequence=True,
                  val=datasets.get("val"))


# ---------------------------------------------------------------------------------------------------
# Finding the files


def _locate(release: Release, base: Path, splits, cache: CacheOptions, download: bool) -> Dict[str, Path]:
    """The .h5 file of each split: placed in <base>/<folder>/, decompressed from an archive placed there, or
    downloaded by tonic (download=True); one message naming every file still missing."""
    root = base / release.folder
    found = {split: _placed(release, root, split, cache) for split in splits}
    missing = [split for split, path in found.items() if path is None]
    if missing and download:
        try:
            for split in missing:
                release.fetch(base, split)
        except Exception as e:  # no network, a server error, a damaged download
            raise _not_found(release, root, splits, err=e) from None
        found.update({split: root / release.file(split) for split in missing})
        missing = [split for split in missing if not found[split].is_file()]
    if missing:
        raise _not_found(release, root, splits, download=download)
    return found


def _placed(release: Release, root: Path, split: str, cache: CacheOptions) -> Optional[Path]:
    """<root>/<name>_<split>.h5 when it is there; else the same file decompressed into the cache from the archive
    placed beside it (.h5.gz or .h5.zip); else None."""
    h5 = root / release.file(split)
    if h5.is_file():
        return h5
    cls = release.tonic_class()
    # tonic's mirror's .h5.zip has its md5 in tonic's class; the authors' .h5.gz has none published there
    for archive, md5 in ((root / f"{h5.name}.gz", None), (root / f"{h5.name}.zip", getattr(cls, f"{split}_md5"))):
        if archive.is_file():
            inside = extracted({archive: md5}, cache.root(), release.folder, cls.base_url) / h5.name
            if not inside.is_file():
                raise CorruptFile(f"{archive}: holds no {h5.name}: not the {release.folder} archive? Get it again",
                                  archive)
            return inside
    return None


def _not_found(release: Release, root: Path, splits, err: Optional[Exception] = None, download: Optional[bool] = None):
    cls = release.tonic_class()
    lines = []
    for split in splits:
        name = release.file(split)
        there = [p.name for p in (root / name, root / f"{name}.gz", root / f"{name}.zip") if p.is_file()]
        status = "missing" if not there else "here" if there[0] == name else f"here as {there[0]}"
        md5 = getattr(cls, f"{split}_md5")
        lines.append(f"  {name:14s} {status};  or its archive {name}.gz (the authors' site) or {name}.zip md5 {md5} "
                     "(tonic's mirror)")
    return missing_error(
        release.folder, root, "\n".join(f"  {root}/{release.file(split)}" for split in splits), "\n".join(lines),
        f"{cls.base_url} (https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/)", err, download)


# ---------------------------------------------------------------------------------------------------
# Reading and checking the samples


def _labels(path: Path) -> np.ndarray:
    """The labels of an SHD/SSC file, after checking that it is one: an HDF5 file with spikes/times, spikes/units
    and labels of equal lengths (a damaged file, or another file under the name, is a CorruptFile)."""
    try:
        with _open(path) as f:
            absent = [k for k in FIELDS if k not in f]
            if absent:
                raise CorruptFile(f"{path}: has no {absent[0]}: not an SHD/SSC file (these hold spikes/times, "
                                  "spikes/units and labels)", path)
            lengths = [len(f[k]) for k in FIELDS]
            if len(set(lengths)) > 1:
                raise CorruptFile(f"{path}: {lengths[0]} spike-time lists, {lengths[1]} unit lists and {lengths[2]} "
                                  "labels: a damaged file? Get it again", path)
            return np.asarray(f["labels"][()]).astype(np.int64)
    except OSError as e:  # not HDF5, truncated, unreadable
        raise CorruptFile(f"{path}: not a readable HDF5 file ({e}): a damaged or incomplete copy? Get it again",
                          path) from None


def _open(path):
    """h5py's read-only file, without HDF5's file lock (which fails on some network and read-only mounts)."""
    import h5py

    return h5py.File(path, "r", locking=False)


class ReadSample:
    """(file, index) -> that sample's frames [T, C] (uint16 counts); a picklable callable for the cache's worker
    processes, each keeping the files it reads open (not pickled: a worker opens its own)."""

    def __init__(self, frames: SpikeTrainFrames, num_classes: int):
        self.frames, self.num_classes, self._files = frames, num_classes, {}

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def __call__(self, source):
        path, i = source
        if path not in self._files:
            self._files[path] = _open(path)
        t_us, units = read_sample(self._files[path], path, i, self.num_classes)
        o = self.frames
        return channel_frames(t_us, units, CHANNELS, o.T, o.bin_ms, CHANNELS // o.channels)


def read_sample(f, path, i: int, num_classes: int):
    """Sample i of an open SHD/SSC file as (spike times in whole microseconds, channels), both int64, checked:
    as many times as channels, times finite, >= 0 and non-decreasing, channels 0..699, label 0..num_classes-1
    (else a CorruptFile naming the file and the sample). Times are widened to float64 before scaling (the files
    store float16, whose largest value is 65504) and truncated to microseconds, as tonic's reader does."""
    where = f"{path}: sample {i}"
    try:
        times, units, label = f["spikes/times"][i], f["spikes/units"][i], f["labels"][i]
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CorruptFile(f"{where} cannot be read ({e}): a damaged file? Get it again", path) from None
    times, units = np.asarray(times, dtype=np.float64), np.asarray(units)
    if len(times) != len(units):
        raise CorruptFile(f"{where}: {len(times)} spike times but {len(units)} channels", path)
    if not np.isfinite(times).all() or (len(times) and times.min() < 0):
        raise CorruptFile(f"{where}: a negative or non-finite spike time ({times[~(times >= 0)][0]} s)", path)
    back = np.flatnonzero(np.diff(times) < 0)
    if len(back):
        j = int(back[0])
        raise CorruptFile(f"{where}: spike times go backwards ({times[j]} s, then {times[j + 1]} s)", path)
    if units.dtype.kind not in "iu":
        raise CorruptFile(f"{where}: channels stored as {units.dtype}, not as integers", path)
    outside = units[(units < 0) | (units >= CHANNELS)]
    if len(outside):
        raise CorruptFile(f"{where}: channel {outside[0]} outside the {CHANNELS} channels 0..{CHANNELS - 1}", path)
    if not 0 <= int(label) < num_classes:
        raise CorruptFile(f"{where}: label {int(label)} outside the {num_classes} classes 0..{num_classes - 1}", path)
    return (times * 1e6).astype(np.int64), units.astype(np.int64)
