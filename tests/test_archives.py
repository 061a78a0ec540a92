"""Archives placed in a data folder are not believed (issue 26): each is checked against the official md5 where
one is published, before it is extracted, and extracted entry by entry with a filter that refuses absolute
paths, '..', links that could lead out of the folder and device files. Nothing is ever written outside the cache's
extraction folder, and a refused archive leaves nothing behind. The datasets' archives are built here around the
small recordings of tests/event_writers.py and tests/audio_writers.py."""

import gzip
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from audio_writers import make_shd, zip_file
from conftest import run_snnexp
from event_writers import make_cifar10dvs, make_gesture, make_nmnist
from snnexp import data
from snnexp.data import CorruptFile, archives, events
from snnexp.data.archives import extracted


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def everything(root: Path) -> set:
    """Every path under root, but the cache's extraction folder: what an extraction must not add to."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if "extracted" not in p.relative_to(root).parts}


def extracted_folders(cache: Path) -> list:
    return [p for p in (cache / "extracted").iterdir() if p.is_dir()] if (cache / "extracted").is_dir() else []


def add(tar: tarfile.TarFile, name: str, content: bytes = b"data", **info) -> None:
    """An entry `name` (a file of `content`, or what `info` says: type, linkname, devmajor...) in `tar`."""
    entry = tarfile.TarInfo(name)
    for k, v in info.items():
        setattr(entry, k, v)
    entry.size = len(content) if entry.isreg() else 0
    tar.addfile(entry, io.BytesIO(content) if entry.isreg() else None)


def hostile_tar(path: Path, outside: Path, case: str) -> str:
    """DvsGesture.tar.gz: a good file first, then the hostile entry of `case`; returns that entry's name."""
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "DvsGesture/README.txt")
        if case == "../ in a name":
            name = "DvsGesture/../../../../outside/x"
            add(tar, name)
        elif case == "an absolute path":
            name = str(outside / "x")
            add(tar, name)
        elif case == "a symlink to /etc":
            name = "DvsGesture/link"
            add(tar, name, type=tarfile.SYMTYPE, linkname="/etc")
        elif case == "a symlink out through ..":
            name = "DvsGesture/up"
            add(tar, name, type=tarfile.SYMTYPE, linkname="../../../../outside")
        elif case == "a hardlink outside":
            name = "DvsGesture/hard"
            add(tar, name, type=tarfile.LNKTYPE, linkname=str(outside / "secret"))
        elif case == "a device file":
            name = "DvsGesture/null"
            add(tar, name, type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        else:
            raise ValueError(case)
    return name


TAR_CASES = ["../ in a name", "an absolute path", "a symlink to /etc", "a symlink out through ..",
             "a hardlink outside", "a device file"]


@pytest.fixture
def layout(tmp_path):
    """tmp_path/outside (beside the work folder), tmp_path/work/{data,cache/extracted}: a '../../../..' from the
    extraction folder lands in tmp_path, where `everything` sees it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("not to be linked into the cache")
    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "work" / "cache" / "extracted").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("python_filter", [True, False], ids=["with Python's filter", "our check alone"])
@pytest.mark.parametrize("case", TAR_CASES)
def test_a_hostile_tar_is_refused_and_nothing_is_written_outside(layout, case, python_filter, monkeypatch):
    if not python_filter:  # as on a Python before 3.11.4 (3.10.12), which has no tarfile filter
        monkeypatch.setattr(archives, "_TAR_FILTER", {})
    archive = layout / "work" / "data" / "DvsGesture.tar.gz"
    entry = hostile_tar(archive, layout / "outside", case)
    before = everything(layout)
    with pytest.raises(CorruptFile) as err:
        extracted({archive: None}, layout / "work" / "cache", "DvsGesture", "IBM")
    assert str(err.value).startswith(f"{archive}: refused, entry {entry} ")
    assert everything(layout) == before  # nothing outside, nor beside, the extraction folder
    assert not extracted_folders(layout / "work" / "cache")  # and nothing of the archive kept


def test_a_zip_with_dotdot_is_refused_and_nothing_is_written_outside(layout):
    archive = layout / "work" / "data" / "train.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Train/0/00000.bin", b"")
        z.writestr("../../../outside/x", b"planted")
    before = everything(layout)
    with pytest.raises(CorruptFile, match=r"train.zip: refused, entry \.\./\.\./\.\./outside/x has an absolute path "
                                          r"or '\.\.' in its name"):
        extracted({archive: None}, layout / "work" / "cache", "NMNIST", "the N-MNIST site")
    assert everything(layout) == before and not extracted_folders(layout / "work" / "cache")


def test_a_hostile_dvs_gesture_archive_is_refused_through_the_loader(layout, monkeypatch):
    """Even an archive whose md5 matched the one published (here: the published one set to its md5) is refused
    for a link to /etc, by the loader a run uses."""
    archive = layout / "work" / "data" / "DvsGesture.tar.gz"
    hostile_tar(archive, layout / "outside", "a symlink to /etc")
    monkeypatch.setattr(events, "GESTURE_MD5", md5(archive))
    with pytest.raises(CorruptFile, match="refused, entry DvsGesture/link is a link to /etc"):
        data.dvs_gesture(str(layout / "work" / "data"), download=False, cache_dir=str(layout / "work" / "cache"))
    assert not extracted_folders(layout / "work" / "cache")


def test_good_archives_still_extract_with_their_inner_links(tmp_path):
    """A tar.gz with folders, a file, a symbolic and a hard link inside it; a zip; a single .gz. (A guard: the
    filter must not refuse what is safe.)"""
    tgz = tmp_path / "good.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        add(tar, "top", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "top/sub/a.bin", b"A")
        add(tar, "top/sub/alias", type=tarfile.SYMTYPE, linkname="a.bin")
        add(tar, "top/hard", type=tarfile.LNKTYPE, linkname="top/sub/a.bin")
    out = extracted({tgz: md5(tgz)}, tmp_path / "cache", "Good", "here")
    assert (out / "top/sub/a.bin").read_bytes() == b"A" and os.readlink(out / "top/sub/alias") == "a.bin"
    assert (out / "top/sub/alias").read_bytes() == b"A" and (out / "top/hard").read_bytes() == b"A"
    z = tmp_path / "good.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("Train/3/1.bin", b"events")
    assert (extracted({z: None}, tmp_path / "cache", "Good", "here") / "Train/3/1.bin").read_bytes() == b"events"
    gz = tmp_path / "shd_train.h5.gz"
    gz.write_bytes(gzip.compress(b"hdf5"))
    assert (extracted({gz: None}, tmp_path / "cache", "Good", "here") / "shd_train.h5").read_bytes() == b"hdf5"


def test_a_damaged_tar_is_named(tmp_path):
    tgz = tmp_path / "DvsGesture.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        add(tar, "DvsGesture/a.aedat", os.urandom(100_000))
    tgz.write_bytes(tgz.read_bytes()[:50_000])  # an interrupted download
    with pytest.raises(CorruptFile, match=r"DvsGesture.tar.gz: cannot extract it \(.*\): a damaged or incomplete "
                                          r"download\? Get it again"):
        extracted({tgz: None}, tmp_path / "cache", "DvsGesture", "IBM")
    assert not extracted_folders(tmp_path / "cache")


# ------------------------------------------------------------------------------ the official md5s

def zip_folder(archive: Path, folder: Path, arcroot: str) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f"{arcroot}/{f.relative_to(folder).as_posix()}")


def place_gesture(src: Path, data_dir: Path) -> Path:
    make_gesture(src)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(data_dir / "DvsGesture.tar.gz", "w:gz") as tar:
        tar.add(src / "DvsGesture", arcname="DvsGesture")
    return data_dir / "DvsGesture.tar.gz"


def place_nmnist(src: Path, data_dir: Path) -> Path:
    make_nmnist(src, per_digit=1, digits=range(2))
    (data_dir / "NMNIST").mkdir(parents=True)
    for folder, name in (("Train", "train.zip"), ("Test", "test.zip")):
        zip_folder(data_dir / "NMNIST" / name, src / "NMNIST" / folder, folder)
    return data_dir / "NMNIST" / "train.zip"


def place_cifar10dvs(src: Path, data_dir: Path) -> Path:
    make_cifar10dvs(src, classes=("cat",), per_class=2)
    zip_folder(src / "cat.zip", src / "CIFAR10DVS" / "cat", "cat")
    (data_dir / "CIFAR10DVS").mkdir(parents=True)
    with zipfile.ZipFile(data_dir / "CIFAR10DVS" / "CIFAR10DVS.zip", "w") as z:
        z.write(src / "cat.zip", "cat.zip")
    return data_dir / "CIFAR10DVS" / "CIFAR10DVS.zip"


def place_shd(src: Path, data_dir: Path) -> Path:
    folder = make_shd(src)
    (data_dir / "SHD").mkdir(parents=True)
    zip_file(folder / "shd_train.h5", data_dir / "SHD" / "shd_train.h5.zip")
    zip_file(folder / "shd_test.h5", data_dir / "SHD" / "shd_test.h5.zip")
    return data_dir / "SHD" / "shd_train.h5.zip"


OFFICIAL = {  # loader, how to place its archives, the md5 expected of the first, the dataset's name
    "dvs_gesture": (data.dvs_gesture, place_gesture, "8a5c71fb11e24e5ca5b11866ca6c00a1", "DvsGesture"),
    "nmnist": (data.nmnist, place_nmnist, "20959b8e626244a1b502305a9e6e2031", "NMNIST"),
    "dvs_cifar10": (data.dvs_cifar10, place_cifar10dvs, "ce3a4a0682dc0943703bd8f749a7701c", "CIFAR10DVS"),
    "shd": (data.shd, place_shd, "f3252aeb598ac776c1b526422d90eecb", "SHD"),
}


@pytest.mark.parametrize("dataset", OFFICIAL)
def test_an_archive_that_is_not_the_official_one_is_refused_naming_both_md5s(tmp_path, dataset):
    """Our small archives under the official names, in the layouts the loaders expect: each md5 differs from the
    published one, so each is refused before anything is extracted."""
    loader, place, expected, name = OFFICIAL[dataset]
    archive = place(tmp_path / "src", tmp_path / "data")
    with pytest.raises(CorruptFile) as err:
        loader(str(tmp_path / "data"), download=False, cache_dir=str(tmp_path / "cache"), workers=1)
    assert str(err.value).startswith(f"{archive}: not the official {name} file (md5 {md5(archive)}, expected "
                                     f"{expected}): a damaged or incomplete copy? Get it again from ")
    assert not extracted_folders(tmp_path / "cache")


def test_a_foreign_dvs_gesture_archive_stops_a_run_with_one_line(tmp_path):
    archive = place_gesture(tmp_path / "src", tmp_path / "data")
    proc = run_snnexp("train", "dataset=dvs_gesture", "dataset.data_dir=data", "dataset.download=false",
                      "hydra.run.dir=run", cwd=tmp_path, env={"SNNEXP_CACHE": str(tmp_path / "cache")}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"snnexp: error: {archive}: not the official DvsGesture file (md5 {md5(archive)}, "
            "expected 8a5c71fb11e24e5ca5b11866ca6c00a1)") in proc.stderr


def test_the_md5_is_checked_once_when_extracting_and_again_for_a_replaced_archive(tmp_path, monkeypatch):
    archive = place_gesture(tmp_path / "src", tmp_path / "data")
    monkeypatch.setattr(events, "GESTURE_MD5", md5(archive))  # as if ours were the official archive
    load = dict(download=False, T=2, downsample=8, workers=1, cache_dir=str(tmp_path / "cache"))
    assert len(data.dvs_gesture(str(tmp_path / "data"), **load).train) == 3
    monkeypatch.setattr(events, "GESTURE_MD5", "0" * 32)
    assert len(data.dvs_gesture(str(tmp_path / "data"), **load).train) == 3  # the extraction is reused, not hashed
    with tarfile.open(archive, "w:gz") as tar:  # another archive under the name
        tar.add(tmp_path / "src" / "DvsGesture", arcname="DvsGesture")
    os.utime(archive, ns=(1, 1))
    with pytest.raises(CorruptFile, match=f"expected {'0' * 32}"):
        data.dvs_gesture(str(tmp_path / "data"), **load)
