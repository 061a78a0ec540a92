"""Archives a user placed in the data folder, extracted once into the cache so that the data folder is only ever
read: `extracted()`.

The cache root holds `extracted/`: the official archives (and MNIST's .gz files) that a user placed in the data
folder, extracted once by `extracted()`, so that the data folder is only ever read. An archive is not believed
either: before it is extracted, its md5 is compared with the official file's where one is published (a
mismatch names both), and every entry is checked as it is extracted: an absolute path, a '..', a link that could
lead out of the folder or a device file refuses the whole archive (it could write outside the cache, or plant
a link to /etc in it), and nothing of it is kept.
"""


import gzip
import hashlib
import logging
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Mapping, Optional

from filelock import FileLock

from snnexp.data.cache import cache_key_digest
from snnexp.errors import CorruptFile, DatasetError
from snnexp.files import atomic_path

log = logging.getLogger("snnexp")

EXTRACTOR_VERSION = 2  # 2: md5 and entries checked (issue 26): an extraction by an older snnexp is redone


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


class _Unsafe(DatasetError):
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
