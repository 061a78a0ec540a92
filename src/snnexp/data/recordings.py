"""What the recording datasets share (event cameras, events.py; audio spikes, audio.py): their options as flat
keywords of the loaders, grouped as tonic groups a frame transform and a disk cache (FrameOptions: what changes the
frames, T, split_by, bin_ms, downsample, denoise_ms; CacheOptions: cache_dir, workers, on_corrupt; Augment: flip,
roll, training frames only), the conversion of one recording to frames (ToFrames), the dataset that reads a
FrameCache (FrameDataset), the splits built from lists of recordings (build_splits), the listing of a data folder
(sorted_files), the message of a dataset not found (missing_error) and the seeded class-stratified split of a
dataset without an official one (stratified_split).
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from snnexp.data.cache import FrameCache, default_cache_dir
from snnexp.data.frames import events_to_frames
from snnexp.data.readers import read_source
from snnexp.data.static import Splits
from snnexp.errors import DatasetError
from snnexp.files import write_json_atomic

log = logging.getLogger("snnexp")


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

    def without_augmentation(self) -> "FrameDataset":
        """The same samples, never flipped or moved (a validation set held out of the training set)."""
        return FrameDataset(self.cache_dir)

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


def build_splits(name, data_dir, lists, sensor_size, num_classes, frames: FrameOptions, cache: CacheOptions,
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
               "files": source_digest(sources, data_dir)}
        built = FrameCache(cache.root(), key)
        built.get_or_build(sources, [label for _, label in samples], convert, shape, cache.workers, cache.on_corrupt,
                           desc=f"{name} {split}: events -> {frames.T} frames", num_classes=num_classes)
        aug = augment if split == "train" else Augment()
        datasets[split] = FrameDataset(built.dir, flip=aug.flip, roll=aug.roll)
    return Splits(datasets["train"], datasets["test"], shape[1:], num_classes, sequence=True)


def source_digest(sources, data_dir) -> str:
    """Which files (relative to data_dir), their sizes and modification times: a changed, added or
    removed file gives a new cache."""
    h = hashlib.sha256()
    for s in sources:
        path, rest = (s[0], s[1:]) if isinstance(s, tuple) else (s, ())
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, data_dir)}|{st.st_size}|{st.st_mtime_ns}|{rest}\n".encode())
    return h.hexdigest()[:16]


def missing_error(name, folder: Path, layout: str, files: str, source: str, err: Optional[Exception] = None,
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


def sorted_files(folder: Path, suffixes) -> List[Path]:
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


def stratified_split(samples: Sequence[Tuple[str, int]], test_fraction: float, seed: int, store: Path, base: str):
    """Per class: a seeded permutation of the sorted files, the first n_test for test (held_out_count: about
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
        n_test = held_out_count(test_fraction, len(rels))
        for j, idx in enumerate(order):
            known[rels[idx]] = "test" if j < n_test else "train"
    lists = {"train": [], "test": []}
    for path, label in samples:
        lists[known[os.path.relpath(path, base)]].append((path, label))
    if new_by_class:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(store, {s: sorted(r for r, v in known.items() if v == s) for s in ("train", "test")})
    return lists


def held_out_count(test_fraction: float, n: int) -> int:
    """How many of a class's n recordings go to the test set (or, data.validation, the validation set):
    round(test_fraction * n), but at least 1 and at most n - 1 when n >= 2, so that a small subset (3 recordings a
    class: 0.3 rounds to 0) still tests every class; a class of one recording trains."""
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
    if any(held_out_count(test_fraction, c["train"] + c["test"]) for c in counts.values()):
        fix = (f"the split stored in {store} (made when there were fewer recordings, or by an older snnexp) is "
               "reused: delete it to split again")
    else:
        fix = "a class needs 2 or more recordings to give one to each set: add recordings to dataset.data_dir"
    return (f"the split (dataset.test_fraction={test_fraction}) leaves the {'test' if lists['train'] else 'training'} "
            f"set empty: {len(lists['train'])} train / {len(lists['test'])} test recordings ({per_class}); {fix}")
