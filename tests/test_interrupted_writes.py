"""Writes cut short (issue 28): a disk that fills up inside torch's checkpoint writer, under `snnexp export` or at
start-up, and a second Ctrl-C while a checkpoint is written, each end in one line and a known exit code, with the
previous files intact and no temporary file left behind. Each full disk is tested with an injected failure, and
where this machine may mount a small tmpfs (root), on a real one as well."""

import builtins
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_snnexp
from snnexp import files
from snnexp.errors import ExportError
from snnexp.export import export_checkpoint
from snnexp.train import checkpoint

# a checkpoint (last.pt, 300 kB for the default network) after each of two steps, then the run ends
TRAIN = ["trainer.progress=false", "trainer.epochs=1", "trainer.max_steps=2", "trainer.ckpt_every_steps=1"]


class WrappedFile:
    """An open file, passed through; a subclass changes what a write does."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


class FullDisk(WrappedFile):
    """An open file with `room` bytes left: the write that goes past it writes what fits and fails as a full disk
    does (ENOSPC)."""

    def __init__(self, file, room: int):
        super().__init__(file)
        self.room = room

    def write(self, data):
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh folder on a tmpfs of that size; skips where this user may not mount (not root)."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: the injected-failure tests cover this")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}): the injected-failure tests "
                        "cover this")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of the default network (digits, convnet), two steps."""
    cwd = tmp_path_factory.mktemp("trained")
    run_snnexp("train", *TRAIN, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run" / "checkpoints" / "last.pt"


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return lines[0]


def no_temporaries(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp-*"))


# --- a full disk inside torch's checkpoint writer -----------------------------------------------------------------

def test_a_full_disk_inside_torchs_writer_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer swallows the write's OSError and raises RuntimeError('unexpected pos'): still a full disk."""
    before = {}

    def full_once_a_checkpoint_exists(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        last = Path(path).parent / "last.pt"
        if not (last.is_file() and Path(path).name.startswith("last.pt.tmp-")):
            return file
        before.setdefault("last", last.read_bytes())
        return FullDisk(file, room=100_000)  # the real checkpoint is 300 kB

    monkeypatch.setattr(checkpoint, "open", full_once_a_checkpoint_exists, raising=False)
    proc = run_snnexp("train", *TRAIN, "hydra.run.dir=run", cwd=tmp_path, check=False)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"snnexp: error: cannot write checkpoint {last}: No space left on device (free "
                                     "disk space, or give hydra.run.dir=... elsewhere); the previous checkpoint is "
                                     "intact")
    assert last.read_bytes() == before["last"] and no_temporaries(tmp_path / "run")


def test_a_bug_in_torchs_writer_is_not_called_a_full_disk(tmp_path, monkeypatch):
    def broken(contents, f):
        raise RuntimeError("a bug, not the disk")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError, match="a bug, not the disk"), open(tmp_path / "x.pt", "wb") as f:
        checkpoint._torch_save({}, f)


def test_a_real_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(small_disk):
    disk = small_disk("400k")  # room for step 1's last.pt (300 kB), not for step 2's beside it
    proc = run_snnexp("train", *TRAIN, f"hydra.run.dir={disk / 'run'}", cwd=disk, check=False)
    last = disk / "run" / "checkpoints" / "last.pt"
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"snnexp: error: cannot write checkpoint {last}: No space left on device")
    assert checkpoint.load(last)["step"] == 1 and no_temporaries(disk)


# --- snnexp export to a full disk ---------------------------------------------------------------------------------

def test_export_to_a_full_disk_is_an_export_error_and_leaves_no_file(trained, tmp_path, monkeypatch):
    def full(path, mode="r", *args, **kwargs):
        return FullDisk(builtins.open(path, mode, *args, **kwargs), room=1000)

    monkeypatch.setattr(files, "open", full, raising=False)
    out = tmp_path / "net.nir"
    with pytest.raises(ExportError, match=f"^cannot write {out}: No space left on device; free disk space"):
        export_checkpoint(trained, out=out)
    assert list(tmp_path.iterdir()) == []


def test_export_to_a_real_full_disk_is_one_line_not_a_segfault(trained, small_disk, tmp_path):
    disk = small_disk("64k")  # the export is 220 kB; h5py writing to it directly crashed (SIGSEGV, exit 139)
    out = disk / "net.nir"
    proc = run_snnexp("export", f"checkpoint={trained}", f"out={out}", f"hydra.run.dir={tmp_path / 'ex'}",
                      cwd=tmp_path, check=False, process=True, timeout=120)
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"snnexp: error: cannot write {out}: No space left on device")
    assert list(disk.iterdir()) == []


# --- a full disk at start-up --------------------------------------------------------------------------------------

def test_a_nearly_full_disk_at_start_up_is_one_line_before_hydra_writes(tmp_path, monkeypatch):
    """Less than MIN_FREE left (injected: shutil.disk_usage): said before Hydra writes .hydra/*.yaml, whose own
    failure would be its traceback and exit 1."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=5 * 1024))
    proc = run_snnexp("train", *TRAIN, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert one_line(proc) == (f"snnexp: error: cannot write the run directory {tmp_path / 'run'}: its disk is full (5 "
                              f"KiB free at {tmp_path}); free disk space, or give hydra.run.dir=DIR on a disk with "
                              "room")
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_disk_at_start_up_is_one_line_for_a_run_and_a_sweep(small_disk):
    disk = small_disk("64k")
    with pytest.raises(OSError):  # fill it
        (disk / "filler").write_bytes(b"\0" * 100_000)
    for args, key in ((["hydra.run.dir=run"], "hydra.run.dir"), (["-m", "hydra.sweep.dir=sweep"], "hydra.sweep.dir")):
        proc = run_snnexp("train", *TRAIN, *args, cwd=disk, check=False)
        folder = disk / args[-1].split("=")[1]
        assert proc.returncode == 2
        assert one_line(proc) == (f"snnexp: error: cannot write the run directory {folder}: its disk is full (0 KiB "
                                  f"free at {disk}); free disk space, or give {key}=DIR on a disk with room")


# --- a second Ctrl-C while a checkpoint is written ----------------------------------------------------------------

# snnexp train, where Ctrl-C is pressed twice while step 2's last.pt is written (its first bytes): the first asks to
# stop after the step, the second lands inside torch's writer
CTRL_C_TWICE = """
import builtins, os, signal, sys
from pathlib import Path
sys.path.insert(0, TESTS)
from snnexp import cli
from snnexp.train import checkpoint
from test_interrupted_writes import WrappedFile

class CtrlCTwice(WrappedFile):
    def write(self, data):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return self.file.write(data)

def open_(path, mode="r"):
    file = builtins.open(path, mode)
    last = Path(path).parent / "last.pt"
    return CtrlCTwice(file) if last.is_file() and Path(path).name.startswith("last.pt.tmp-") else file

checkpoint.open = open_
cli.main(sys.argv[1:])
""".replace("TESTS", repr(str(Path(__file__).parent)))


def test_a_second_ctrl_c_while_a_checkpoint_is_written_stops_at_once_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CTRL_C_TWICE, "train", *TRAIN, "hydra.run.dir=run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[20")]  # the log's lines
    assert len(lines) == 1 and lines[0].startswith("snnexp: stopped at once by a second SIGINT, without saving"), \
        proc.stderr
    folder = tmp_path / "run" / "checkpoints"
    assert checkpoint.load(folder / "last.pt")["step"] == 1 and no_temporaries(folder)  # step 1's, intact


def test_an_interrupted_atomic_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "a.pt") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
