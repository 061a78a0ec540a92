"""FrameCache: each split of an event dataset converted to frames once, then read from disk.

A cache is a folder named by a hash of everything that changes the frames (dataset, split, T, split
method, bin size, sensor size, downsampling, denoising, corrupt files stopping or skipped, the list of source
files, FORMAT_VERSION), so a change of any of them builds a new one and an old one is never served. It holds

    frames.npy   uint16 [N, T, 2, H, W], read through a memory map (near disk/page-cache speed)
    labels.npy   int64 [N]
    meta.json    the key, the source files, the samples skipped as corrupt and their files, and the checks

The build writes a temporary folder and renames it into place (snnexp.files.atomic_path: an interrupted
build never looks complete, and the next build removes what it left), under a file lock, so that several
multirun jobs starting at once build it once and the others wait and read it. Samples are converted in
worker processes, with a progress bar.

A build that cannot finish says so and leaves nothing running. frames.npy's disk space is reserved before it is
written through its memory map (a write into space the disk cannot give would be SIGBUS: the process killed with
no message), so a full disk is a DatasetError naming the folder and where else to put the cache. The worker
processes end with the build: on an error or Ctrl-C the pending conversions are cancelled and the workers ended,
and each worker ends itself when the process that started it ends, even by SIGKILL (an orphan would live on,
idle, holding a few hundred MB of memory).

A cache on disk is not believed blindly: a disk, a copy or another program can damage it, and a run would then
train on scrambled labels, on frames of another T, or crash deep in torch. Every load checks, cheaply, what
meta.json's "checks" recorded at the build: frames.npy's header (shape [N, *frame shape], uint16: its data is
not read) and size, labels.npy's size and sha256 (it is small), and labels in 0..num_classes-1. A cache that
fails is refused (CorruptFile naming the folder and `rm -r` of it; the next run rebuilds it): it is not rebuilt
silently, since damage means something else is wrong. A cache built by an snnexp without the checks cannot be
checked, so it is rebuilt in place, under the lock.

The same root holds `extracted/`, the official archives a user placed in the data folder, extracted once
(data/archives.py). The conversion workers and frames.npy's preallocation are data/workers.py.
"""

import hashlib
import io
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from snnexp import cache_home
from snnexp.data.workers import SafeConvert, new_npy, truncate_npy, worker_pool
from snnexp.errors import CorruptFile, DatasetError
from snnexp.files import atomic_path, temporary_name

log = logging.getLogger("snnexp")

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """$SNNEXP_CACHE, else $XDG_CACHE_HOME/snnexp/frames, else ~/.cache/snnexp/frames: outside the data
    folder, which may be read-only or shared."""
    if os.environ.get("SNNEXP_CACHE"):
        return Path(os.environ["SNNEXP_CACHE"])
    return cache_home() / "frames"


def cache_key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class FrameCache:
    def __init__(self, root, key: dict):
        self.key = {**key, "format_version": FORMAT_VERSION}
        self.dir = Path(root).expanduser() / f"{key['dataset']}-{key['split']}-{cache_key_digest(self.key)}"

    def load(self) -> Tuple[np.ndarray, np.ndarray, dict]:
        meta = json.loads((self.dir / "meta.json").read_text())
        frames = np.load(self.dir / "frames.npy", mmap_mode="r")
        return frames, np.load(self.dir / "labels.npy"), meta

    def get_or_build(self, sources: Sequence, labels: Sequence[int], convert: Callable, frame_shape,
                     workers: Optional[int] = None, on_corrupt: str = "error", desc: str = "", *, num_classes: int):
        """Return (frames memmap, labels, meta), building the cache first if needed; a cache that fails its checks
        (`check`: frames of `frame_shape`, labels 0..num_classes-1) is a CorruptFile naming its folder.
        `convert(source)` turns one source into frames of `frame_shape` or raises CorruptFile."""
        try:
            if self.check(frame_shape, num_classes):
                return self._reuse()
        except CorruptFile:
            pass  # judged again under the lock: another job may be replacing an old cache right now
        with self._writing(len(sources) * int(np.prod(frame_shape)) * 2):
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.dir) + ".lock"):
                if self.check(frame_shape, num_classes):  # another job built it while we waited
                    return self._reuse()
                for stale in self.dir.parent.glob(self.dir.name + ".tmp-*"):  # an interrupted build
                    shutil.rmtree(stale, ignore_errors=True)
                if self.dir.exists():  # built by an snnexp that kept no checks: renamed away, then removed
                    log.info("rebuilding frame cache %s: built by an older snnexp, it cannot be checked", self.dir)
                    aside = temporary_name(self.dir)  # a name the next build removes, if this one is killed
                    os.replace(self.dir, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                self._build(sources, labels, convert, frame_shape, workers, on_corrupt, desc, num_classes)
        return self.load()

    @contextmanager
    def _writing(self, frame_bytes: int):
        """An OSError while the cache is written (no room, a quota, a folder that cannot be written) becomes a
        DatasetError naming the folder and where else to put it; Ctrl-C says what becomes of the build. (Reading a
        source is not in this: a worker's OSError comes back as a DatasetError naming the file, see _safe.)"""
        try:
            yield
        except OSError as e:
            raise DatasetError(f"cannot write the frame cache {self.dir.absolute()} ({frame_bytes / 1e6:.1f} MB of "
                               f"frames): {e.strerror or e}; free disk space there or set dataset.cache_dir (or "
                               "SNNEXP_CACHE) to a folder with room. Nothing of this build is kept") from None
        except KeyboardInterrupt as e:  # kept as it is (the CLI's one line, exit 130); says where, if it does not
            e.args = e.args or (f"while building the frame cache {self.dir.absolute()}: what was written of it is "
                                "never read; the next run builds it again",)
            raise

    def check(self, frame_shape, num_classes: int) -> bool:
        """True when the cache is there and passes its checks, False when it is not there or was built by an snnexp
        that kept no checks (to be rebuilt); a CorruptFile naming the folder and how to rebuild it otherwise.
        Cheap: frames.npy's header and size, labels.npy's checksum (it is small); the frames are not read."""
        if not self.dir.exists():
            return False
        meta = self._meta()
        if "checks" not in meta:
            return False
        try:
            problem = self._problem(meta, frame_shape, num_classes)
        except (KeyError, TypeError) as e:
            problem = f"meta.json lacks its checks ({type(e).__name__}: {e})"
        if problem:
            raise self._damaged(problem)
        return True

    def _meta(self) -> dict:
        try:
            meta = json.loads((self.dir / "meta.json").read_text())
        except FileNotFoundError:
            raise self._damaged("it has no meta.json") from None
        except (OSError, ValueError) as e:
            raise self._damaged(f"meta.json is not readable JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("key") != self.key:
            raise self._damaged("meta.json does not describe this cache (no dict, or another key)")
        return meta

    def _problem(self, meta: dict, frame_shape, num_classes: int) -> str:
        """What is wrong with the files, as measured against meta.json's checks ('' when nothing is)."""
        checks, n = meta["checks"], meta["samples"]
        for name in ("frames.npy", "labels.npy"):
            if not (self.dir / name).is_file():
                return f"{name} is missing"
        try:
            frames = np.load(self.dir / "frames.npy", mmap_mode="r")  # reads the header alone
        except (OSError, ValueError, EOFError) as e:  # a mapping past the end of the file: truncated
            return f"frames.npy cannot be read ({e})"
        expected = (n, *frame_shape)
        if frames.shape != expected or frames.dtype != np.uint16:
            return f"frames.npy holds {frames.dtype} {list(frames.shape)}, expected uint16 {list(expected)}"
        for name in ("frames.npy", "labels.npy"):
            size = (self.dir / name).stat().st_size
            if size != checks[name]["bytes"]:
                return f"{name} is {size} bytes, {checks[name]['bytes']} when it was built"
        raw = (self.dir / "labels.npy").read_bytes()
        if hashlib.sha256(raw).hexdigest() != checks["labels.npy"]["sha256"]:
            return "labels.npy differs from the labels it was built with (its checksum)"
        labels = np.load(io.BytesIO(raw))
        if labels.shape != (n,):
            return f"labels.npy holds {list(labels.shape)} labels for {n} samples"
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if len(outside):
            return f"label {outside[0]} outside the {num_classes} classes 0..{num_classes - 1}"
        return ""

    def _damaged(self, problem: str) -> CorruptFile:
        where = self.dir.absolute()  # a cache_dir given relative to the folder of the run that built it
        return CorruptFile(f"frame cache {where} is damaged: {problem}; remove it (rm -r {where}) and run again, "
                           "which rebuilds it", where)

    def _reuse(self):
        """load(), repeating the count of corrupt files the build left out: a later run says it too."""
        frames, labels, meta = self.load()
        if meta.get("skipped"):
            log.warning("%s when this cache was built (%s lists them)", skipped_summary(meta), self.dir / "meta.json")
        return frames, labels, meta

    def _build(self, sources, labels, convert, frame_shape, workers, on_corrupt, desc, num_classes):
        """Convert into `<dir>.tmp-<pid>-<random>`, renamed to `dir` at the end: the cache appears complete or
        not at all. An error removes the temporary folder; Ctrl-C or a kill leaves it to the next build."""
        start = time.perf_counter()
        with atomic_path(self.dir) as tmp:
            tmp.mkdir()
            kept, skipped = self._convert(tmp / "frames.npy", sources, convert, frame_shape, workers, on_corrupt,
                                          desc)
            if skipped and not kept:
                raise DatasetError(f"all {len(sources)} samples of {desc or self.dir.name} are in corrupt files, "
                                   f"skipped (dataset.on_corrupt=skip): nothing is left. The first: "
                                   f"{skipped[0]}")
            if skipped:  # drop the unused tail of the array
                truncate_npy(tmp / "frames.npy", len(kept), frame_shape)
            kept_labels = np.asarray(labels, dtype=np.int64)[kept]
            _check_labels([sources[i] for i in kept], kept_labels, num_classes)
            np.save(tmp / "labels.npy", kept_labels)
            files = list(dict.fromkeys(e.path or str(e) for e in skipped))  # a recording gives several samples
            meta = {"key": self.key, "samples": len(kept), "skipped": [str(e) for e in skipped],
                    "skipped_files": files, "sources": [str(sources[i]) for i in kept],
                    "build_s": time.perf_counter() - start, "checks": _checks(tmp)}
            if skipped:
                log.warning("%s", skipped_summary(meta))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        log.info("frame cache built in %.1f s: %s", meta["build_s"], self.dir)

    def _convert(self, path, sources, convert, frame_shape, workers, on_corrupt, desc) \
            -> Tuple[List[int], List[CorruptFile]]:
        """Every source's frames into a new .npy at `path`, in order, leaving out (`on_corrupt="skip"`) or
        raising CorruptFile; returns the indices kept and the errors of the samples skipped."""
        n = len(sources)
        frames = new_npy(path, (n, *frame_shape))
        kept: List[int] = []
        skipped: List[CorruptFile] = []
        workers = workers or os.cpu_count() or 1
        log.info("building frame cache %s (%d samples, %d workers)", self.dir, n, workers)
        bar = tqdm(total=n, desc=desc or f"caching {self.dir.name}", disable=None, dynamic_ncols=True)
        with worker_pool(workers) as pool:
            chunk = max(1, min(64, n // (workers * 8) or 1))
            for i, result in enumerate(pool.map(SafeConvert(convert), sources, chunksize=chunk)):
                if isinstance(result, CorruptFile):
                    if on_corrupt != "skip":
                        raise CorruptFile(f"{result} (dataset.on_corrupt=skip leaves such files out)", result.path)
                    log.warning("skipping %s", result)
                    skipped.append(result)
                else:
                    frames[len(kept)] = result
                    kept.append(i)
                bar.update()
        bar.close()
        frames.flush()
        del frames
        return kept, skipped


def _checks(folder: Path) -> dict:
    """What FrameCache.check compares on every load: the files' sizes, and labels.npy's checksum."""
    sizes = {name: {"bytes": (folder / name).stat().st_size} for name in ("frames.npy", "labels.npy")}
    sizes["labels.npy"]["sha256"] = hashlib.sha256((folder / "labels.npy").read_bytes()).hexdigest()
    return sizes


def _check_labels(sources, labels: np.ndarray, num_classes: int) -> None:
    """Every label in 0..num_classes-1: a cache holding another would be refused on every load, and rebuilt the
    same. (Samples whose own file holds the label were checked, or skipped, by `convert`.)"""
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        i = outside[0]
        raise DatasetError(f"{sources[i]}: label {labels[i]} outside the {num_classes} classes 0..{num_classes - 1}")


def skipped_summary(meta: dict) -> str:
    """'N corrupt file(s) skipped (dataset.on_corrupt=skip): S of M samples left out', from a cache's meta.json."""
    skipped = meta["skipped"]
    files = meta.get("skipped_files", skipped)
    return (f"{len(files)} corrupt file(s) skipped (dataset.on_corrupt=skip): {len(skipped)} of "
            f"{meta['samples'] + len(skipped)} samples left out")

