"""FrameCache: each split of an event dataset converted to frames once, then read from disk.

A cache is a folder named by a hash of everything that changes the frames (dataset, split, T, split
method, bin size, sensor size, downsampling, denoising, corrupt files stopping or skipped, the list of source
files, FORMAT_VERSION), so a change of any of them builds a new one and an old one is never served. It holds

    frames.npy   uint16 [N, T, 2, H, W], read through a memory map (near disk/page-cache speed)
    labels.npy   int64 [N]
    meta.json    the key, the source files, the samples skipped as corrupt and their files

The build writes a temporary folder and renames it into place (snnexp.files.atomic_path: an interrupted
build never looks complete, and the next build removes what it left), under a file lock, so that several
multirun jobs starting at once build it once and the others wait and read it. Samples are converted in
worker processes, with a progress bar.

The same root holds `extracted/`: the official archives (and MNIST's .gz files) that a user placed in the data
folder, extracted once by `extracted()`, so that the data folder is only ever read.
"""

import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from snnexp import cache_home
from snnexp.errors import CorruptFile, DatasetError
from snnexp.files import atomic_path

log = logging.getLogger("snnexp")

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """$SNNEXP_CACHE, else $XDG_CACHE_HOME/snnexp/frames, else ~/.cache/snnexp/frames: outside the data
    folder, which may be read-only or shared."""
    if os.environ.get("SNNEXP_CACHE"):
        return Path(os.environ["SNNEXP_CACHE"])
    return cache_home() / "frames"


def extracted(archives: Sequence[Path], root: Path, name: str, into: str = "", nested: bool = False) -> Path:
    """The contents of `archives` (zip, tar, tar.gz or a single .gz: torchvision's extract_archive) in a folder
    `<root>/extracted/<name>-<key>/` (under its `into` subfolder), extracted on first use and reused after. The
    key hashes the archives' paths, sizes and modification times: a replaced archive is extracted again. The
    folder is built under a temporary name and renamed into place (never seen half extracted), under a file
    lock (parallel jobs extract once). `nested`: zips that the archives hold at their top level (CIFAR10-DVS's
    class zips) are extracted in turn. The archives' own folder is only read."""
    stats = [f"{Path(a).resolve()}|{os.stat(a).st_size}|{os.stat(a).st_mtime_ns}" for a in archives]
    dest = Path(root).expanduser() / "extracted" / f"{name}-{cache_key_digest({'archives': stats})}"
    if dest.is_dir():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(dest) + ".lock"):
            if not dest.is_dir():
                for stale in dest.parent.glob(dest.name + ".tmp-*"):  # an interrupted extraction
                    shutil.rmtree(stale, ignore_errors=True)
                with atomic_path(dest) as tmp:
                    _extract_all(archives, tmp / into, nested)
    except OSError as e:  # no room, or a cache folder that cannot be written
        raise DatasetError(f"cannot extract {', '.join(map(str, archives))} into {dest}: {e.strerror or e}; free "
                           "disk space or set SNNEXP_CACHE (dataset.cache_dir for event data) to a writable folder "
                           "(the data folder is never written)") from None
    return dest


def _extract_all(archives, to: Path, nested: bool) -> None:
    to.mkdir(parents=True)
    for archive in archives:
        _extract_one(archive, to)
    for inner in sorted(to.glob("*.zip")) if nested else ():
        _extract_one(inner, to)
        inner.unlink()


def _extract_one(archive, to: Path) -> None:
    from torchvision.datasets.utils import extract_archive

    log.info("extracting %s into %s", archive, to)
    try:
        extract_archive(str(archive), str(to))
    except (EOFError, ValueError, RuntimeError, tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile,
            zlib.error) as e:  # zlib.error: a .gz whose header reads but whose data does not
        raise CorruptFile(f"{archive}: cannot extract it ({e or type(e).__name__}): a damaged or incomplete "
                          "download? Get it again") from None


def cache_key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class FrameCache:
    def __init__(self, root, key: dict):
        self.key = {**key, "format_version": FORMAT_VERSION}
        self.dir = Path(root).expanduser() / f"{key['dataset']}-{key['split']}-{cache_key_digest(self.key)}"

    def is_complete(self) -> bool:
        meta = self.dir / "meta.json"
        return meta.is_file() and json.loads(meta.read_text()).get("key") == self.key

    def load(self) -> Tuple[np.ndarray, np.ndarray, dict]:
        meta = json.loads((self.dir / "meta.json").read_text())
        frames = np.load(self.dir / "frames.npy", mmap_mode="r")
        return frames, np.load(self.dir / "labels.npy"), meta

    def get_or_build(self, sources: Sequence, labels: Sequence[int], convert: Callable, frame_shape,
                     workers: Optional[int] = None, on_corrupt: str = "error", desc: str = ""):
        """Return (frames memmap, labels, meta), building the cache first if needed.
        `convert(source)` turns one source into frames of `frame_shape` or raises CorruptFile."""
        if self.is_complete():
            return self._reuse()
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir) + ".lock"):
            if self.is_complete():  # another job built it while we waited
                return self._reuse()
            for stale in self.dir.parent.glob(self.dir.name + ".tmp-*"):  # an interrupted build
                shutil.rmtree(stale, ignore_errors=True)
            self._build(sources, labels, convert, frame_shape, workers, on_corrupt, desc)
        return self.load()

    def _reuse(self):
        """load(), repeating the count of corrupt files the build left out: a later run says it too."""
        frames, labels, meta = self.load()
        if meta.get("skipped"):
            log.warning("%s when this cache was built (%s lists them)", skipped_summary(meta), self.dir / "meta.json")
        return frames, labels, meta

    def _build(self, sources, labels, convert, frame_shape, workers, on_corrupt, desc):
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
                _truncate_npy(tmp / "frames.npy", len(kept), frame_shape)
            np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64)[kept])
            files = list(dict.fromkeys(e.path or str(e) for e in skipped))  # a recording gives several samples
            meta = {"key": self.key, "samples": len(kept), "skipped": [str(e) for e in skipped],
                    "skipped_files": files, "sources": [str(sources[i]) for i in kept],
                    "build_s": time.perf_counter() - start}
            if skipped:
                log.warning("%s", skipped_summary(meta))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        log.info("frame cache built in %.1f s: %s", meta["build_s"], self.dir)

    def _convert(self, path, sources, convert, frame_shape, workers, on_corrupt, desc) \
            -> Tuple[List[int], List[CorruptFile]]:
        """Every source's frames into a new .npy at `path`, in order, leaving out (`on_corrupt="skip"`) or
        raising CorruptFile; returns the indices kept and the errors of the samples skipped."""
        n = len(sources)
        frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, *frame_shape))
        kept: List[int] = []
        skipped: List[CorruptFile] = []
        workers = workers or os.cpu_count() or 1
        log.info("building frame cache %s (%d samples, %d workers)", self.dir, n, workers)
        bar = tqdm(total=n, desc=desc or f"caching {self.dir.name}", disable=None, dynamic_ncols=True)
        with ProcessPoolExecutor(workers) if workers > 1 else _InProcess() as pool:
            chunk = max(1, min(64, n // (workers * 8) or 1))
            for i, result in enumerate(pool.map(_safe(convert), sources, chunksize=chunk)):
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


def skipped_summary(meta: dict) -> str:
    """'N corrupt file(s) skipped (dataset.on_corrupt=skip): S of M samples left out', from a cache's meta.json."""
    skipped = meta["skipped"]
    files = meta.get("skipped_files", skipped)
    return (f"{len(files)} corrupt file(s) skipped (dataset.on_corrupt=skip): {len(skipped)} of "
            f"{meta['samples'] + len(skipped)} samples left out")


class _safe:
    """Return CorruptFile instead of raising it, so one bad file does not kill the worker pool."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, source):
        try:
            return self.fn(source)
        except CorruptFile as e:
            return e


class _InProcess:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items, chunksize=1):
        return map(fn, items)


def _truncate_npy(path: Path, n: int, frame_shape) -> None:
    """Keep the first n samples of the .npy at `path` (rewritten beside it, then renamed onto it)."""
    old = np.load(path, mmap_mode="r")
    with atomic_path(path) as part:
        new = np.lib.format.open_memmap(part, mode="w+", dtype=old.dtype, shape=(n, *frame_shape))
        new[:] = old[:n]
        new.flush()
        del new, old
