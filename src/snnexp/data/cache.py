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

The same root holds `extracted/`: the official archives (and MNIST's .gz files) that a user placed in the data
folder, extracted once by `extracted()`, so that the data folder is only ever read. An archive is not believed
either: before it is extracted, its md5 is compared with the official file's where one is published (a
mismatch names both), and every entry is checked as it is extracted: an absolute path, a '..', a link that could
lead out of the folder or a device file refuses the whole archive (it could write outside the cache, or plant
a link to /etc in it), and nothing of it is kept.
"""

import ctypes
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from snnexp import cache_home
from snnexp.errors import CorruptFile, DatasetError
from snnexp.files import atomic_path, temporary_name

log = logging.getLogger("snnexp")

FORMAT_VERSION = 1
EXTRACTOR_VERSION = 2  # 2: md5 and entries checked (issue 26): an extraction by an older snnexp is redone


def default_cache_dir() -> Path:
    """$SNNEXP_CACHE, else $XDG_CACHE_HOME/snnexp/frames, else ~/.cache/snnexp/frames: outside the data
    folder, which may be read-only or shared."""
    if os.environ.get("SNNEXP_CACHE"):
        return Path(os.environ["SNNEXP_CACHE"])
    return cache_home() / "frames"


def extracted(archives: Mapping[Path, Optional[str]], root: Path, name: str, source: str, into: str = "",
              nested: bool = False) -> Path:
    """The contents of `archives` ({archive: md5 of the official file, or None where none is published}: zip, tar,
    tar.gz or a single .gz) in a folder `<root>/extracted/<name>-<key>/` (under its `into` subfolder), extracted on
    first use and reused after. The key hashes the archives' paths, sizes and modification times: a replaced
    archive is checked and extracted again. Before extracting, each archive's md5 is compared with the official
    one (`name` and `source` say which dataset and where to get it again); this happens once per archive, as the
    extraction does. The folder is built under a temporary name and renamed into place (never seen half
    extracted), under a file lock (parallel jobs extract once). `nested`: zips that the archives hold at their top
    level (CIFAR10-DVS's class zips) are extracted in turn. The archives' own folder is only read."""
    stats = [f"{Path(a).resolve()}|{os.stat(a).st_size}|{os.stat(a).st_mtime_ns}" for a in archives]
    key = {"archives": stats, "extractor": EXTRACTOR_VERSION}
    dest = Path(root).expanduser() / "extracted" / f"{name}-{cache_key_digest(key)}"
    if dest.is_dir():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(dest) + ".lock"):
            if not dest.is_dir():
                for archive, md5 in archives.items():
                    _check_md5(archive, md5, name, source)
                for stale in dest.parent.glob(dest.name + ".tmp-*"):  # an interrupted extraction
                    shutil.rmtree(stale, ignore_errors=True)
                with atomic_path(dest) as tmp:
                    _extract_all(list(archives), tmp / into, nested)
    except OSError as e:  # no room, or a cache folder that cannot be written
        raise DatasetError(f"cannot extract {', '.join(map(str, archives))} into {dest}: {e.strerror or e}; free "
                           "disk space or set SNNEXP_CACHE (dataset.cache_dir for event data) to a writable folder "
                           "(the data folder is never written)") from None
    return dest


def _check_md5(archive: Path, md5: Optional[str], name: str, source: str) -> None:
    if md5 is None:  # no official md5 published for this file: its entries are still checked
        return
    digest = hashlib.md5()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != md5:
        raise CorruptFile(f"{archive}: not the official {name} file (md5 {digest.hexdigest()}, expected {md5}): a "
                          f"damaged or incomplete copy? Get it again from {source}", archive)


def _extract_all(archives, to: Path, nested: bool) -> None:
    to.mkdir(parents=True)
    for archive in archives:
        _extract_one(archive, to)
    for inner in sorted(to.glob("*.zip")) if nested else ():
        _extract_one(inner, to, shown=f"{', '.join(map(str, archives))} (its {inner.name})")
        inner.unlink()


class _Unsafe(Exception):
    """An archive entry that could write outside the extraction folder, or make a device file."""


# Python's own tar filter (3.8.17, 3.9.17, 3.10.12, 3.11.4 and later), behind our check of every entry: it also
# resolves the links already extracted, and clears set-uid bits. Older Pythons get our check alone.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERROR = getattr(tarfile, "FilterError", _Unsafe)


def _extract_one(archive, to: Path, shown=None) -> None:
    """Extract a .tar(.gz), .zip or .gz into `to`; a damaged archive or an unsafe entry is a CorruptFile naming
    it (`shown`: how to name it, by default its path)."""
    shown = shown or archive
    extract = _extractor(Path(archive).name)
    if extract is None:
        raise CorruptFile(f"{shown}: not an archive snnexp extracts (.tar, .tar.gz, .tgz, .zip or .gz)", archive)
    log.info("extracting %s into %s", shown, to)
    try:
        extract(archive, to)
    except (_Unsafe, _FILTER_ERROR) as e:
        raise CorruptFile(f"{shown}: refused, {e}: a tampered or foreign archive? Nothing of it is kept; get the "
                          "official one again", archive) from None
    except (EOFError, ValueError, RuntimeError, tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile,
            zlib.error) as e:  # zlib.error: a .gz whose header reads but whose data does not
        raise CorruptFile(f"{shown}: cannot extract it ({e or type(e).__name__}): a damaged or incomplete "
                          "download? Get it again", archive) from None


def _extractor(name: str):
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return _extract_tar
    if name.endswith(".zip"):
        return _extract_zip
    return _extract_gz if name.endswith(".gz") else None


def _extract_tar(archive, to: Path) -> None:
    with tarfile.open(archive) as tar:  # iterated lazily: each entry is checked before it is written
        tar.extractall(to, members=(_safe_member(m) for m in tar), **_TAR_FILTER)


def _safe_member(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """`m` when extracting it stays inside the folder: a relative name without '..'; a link (symbolic or hard)
    to a relative target without '..' (so that no chain of links can climb out either); a file, folder or link,
    not a device or pipe."""
    if _escapes(m.name):
        raise _Unsafe(f"entry {m.name} has an absolute path or '..' in its name")
    if (m.issym() or m.islnk()) and _escapes(m.linkname):
        raise _Unsafe(f"entry {m.name} is a link to {m.linkname}, which may lead out of the folder")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise _Unsafe(f"entry {m.name} is a device file or pipe")
    return m


def _escapes(path: str) -> bool:
    """An absolute path (/x, \\x, C:x) or one with a '..' part: either may lead outside the folder."""
    return path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path) is not None or \
        ".." in re.split(r"[/\\]", path)


def _extract_zip(archive, to: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for entry in z.namelist():  # all checked before anything is written (zipfile makes no links)
            if _escapes(entry):
                raise _Unsafe(f"entry {entry} has an absolute path or '..' in its name")
        z.extractall(to)


def _extract_gz(archive, to: Path) -> None:
    """A single compressed file: <name>.gz -> <to>/<name> (the name is ours, not the archive's)."""
    with gzip.open(archive) as src, open(to / Path(archive).stem, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


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
                _truncate_npy(tmp / "frames.npy", len(kept), frame_shape)
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
        frames = _new_npy(path, (n, *frame_shape))
        kept: List[int] = []
        skipped: List[CorruptFile] = []
        workers = workers or os.cpu_count() or 1
        log.info("building frame cache %s (%d samples, %d workers)", self.dir, n, workers)
        bar = tqdm(total=n, desc=desc or f"caching {self.dir.name}", disable=None, dynamic_ncols=True)
        with _worker_pool(workers) as pool:
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


class _safe:
    """Return CorruptFile instead of raising it, so one bad file does not kill the worker pool. An OSError (a source
    that cannot be read) becomes a DatasetError naming it, so that it is not taken for the cache's disk being full."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, source):
        try:
            return self.fn(source)
        except CorruptFile as e:
            return e
        except OSError as e:
            raise DatasetError(f"{e.filename or source}: cannot be read ({e.strerror or e})") from None


@contextmanager
def _worker_pool(workers: int):
    """`workers` conversion processes (none for 1: converted here), which the build leaves none of behind: when it
    stops on an error or Ctrl-C, the pending conversions are cancelled and the processes ended at once (not after
    the conversions under way, which may take minutes); when this process is killed, each worker ends itself
    (_worker_start)."""
    if workers <= 1:
        yield _InProcess()
        return
    pool = ProcessPoolExecutor(workers, initializer=_worker_start, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        processes = list((pool._processes or {}).values())  # no public way to end them (before Python 3.14)
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(5)
        raise
    pool.shutdown()


PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def _worker_start(parent: int) -> None:
    """Run by each worker as it starts. Ctrl-C at a terminal signals the whole process group: the parent alone
    handles it (and ends the workers), so no worker prints a traceback. A worker ends when the parent ends, even by
    SIGKILL, after which nothing else would end it: on Linux the kernel kills it then (PR_SET_PDEATHSIG), and a
    thread checks every half second (other systems, and a parent gone before this ran)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_end_after, args=(parent,), daemon=True).start()


def _end_after(parent: int) -> None:
    while True:
        try:
            os.kill(parent, 0)  # signal 0: is it there?
        except OSError:  # gone (or its pid already reused by another user's process)
            os._exit(1)
        time.sleep(0.5)


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
        new = _new_npy(part, (n, *frame_shape))
        new[:] = old[:n]
        new.flush()
        del new, old


def _new_npy(path: Path, shape) -> np.memmap:
    """A new uint16 .npy of `shape` at `path`, mapped for writing, its disk space reserved first: a write through a
    memory map into space the disk cannot give is SIGBUS, which kills the process with no message, where the
    reservation is an OSError (ENOSPC) now, before any sample is converted."""
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    with open(path, "r+b") as f:
        _reserve(f.fileno(), frames.offset, frames.nbytes)
    return frames


def _reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the disk blocks of bytes offset..offset+length of the file `fd` (its zeros are already there, as
    a hole in the file, which takes no space until written)."""
    if length == 0:
        return
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, offset, length)
        return
    zeros = bytes(1 << 20)  # no posix_fallocate (macOS): writing the zeros allocates them
    for start in range(offset, offset + length, len(zeros)):
        os.pwrite(fd, zeros[:offset + length - start], start)
