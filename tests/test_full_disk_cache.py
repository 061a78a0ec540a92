"""A frame-cache build that cannot finish (issue 28): a full disk is one line naming the cache folder, not SIGBUS;
and however the build stops (an error, Ctrl-C, SIGKILL of snnexp) none of its worker processes is left behind.
The full disk is a real small tmpfs where mounting is allowed (root), and an injected ENOSPC everywhere."""

import errno
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_snnexp
from event_writers import make_nmnist
from snnexp.data.cache import FrameCache
from snnexp.errors import CorruptFile
from test_frame_cache import KEY, SHAPE, FakeConvert, conversions

TESTS = Path(__file__).resolve().parent
TRAIN = ["train", "dataset=nmnist", "dataset.data_dir=data", "dataset.download=false", "dataset.workers=2",
         "trainer.T=8", "trainer.epochs=1", "trainer.max_steps=1", "trainer.batch_size=4", "model=mlp",
         "hydra.run.dir=run"]
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads processes from /proc (Linux)")


def processes_with(env_entry: str) -> list:
    """The processes (not zombies) whose environment holds `env_entry` (NAME=value): snnexp and every worker it
    started, wherever they were moved when it died."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if env_entry.encode() + b"\0" in environ.read_bytes() and not _zombie(environ.parent):
                found.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or not ours
            pass
    return found


def _zombie(proc: Path) -> bool:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def end(pids) -> None:
    """Kill what a test found left behind (on the code before the fix), so that it does not outlive the test."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


# ---------------------------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs: room for a cache folder, not for the frames."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here; the injected-ENOSPC test covers a full disk")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}; the injected-ENOSPC test covers "
                    "a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@LINUX_PROC
def test_a_full_cache_disk_stops_the_run_with_one_line_not_sigbus_and_leaves_no_worker(tmp_path, small_tmpfs):
    """As a user hits it: SNNEXP_CACHE on a disk without room for the frames (before: SIGBUS, exit 135, no message,
    and the two workers left running)."""
    make_nmnist(tmp_path / "data", per_digit=2)
    marker = f"SNNEXP_CACHE={small_tmpfs}"
    try:
        proc = snnexp_process(*TRAIN, cwd=tmp_path, env={"SNNEXP_CACHE": str(small_tmpfs)})
        left = processes_with(marker)
    finally:
        end(processes_with(marker))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"snnexp: error: cannot write the frame cache {small_tmpfs}/"
                                                   "nmnist-train-")
    assert "No space left on device; free disk space there or set dataset.cache_dir (or SNNEXP_CACHE) to a folder " \
           "with room" in proc.stderr
    assert left == []
    assert [p.suffix for p in small_tmpfs.iterdir()] == [".lock"]  # nothing of the build is kept


def snnexp_process(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`python -m snnexp *args`, its output through files (workers left running would hold a pipe open)."""
    with open(cwd / "stdout", "w+") as out, open(cwd / "stderr", "w+") as err:
        code = subprocess.call([sys.executable, "-m", "snnexp", *args], cwd=cwd, env={**os.environ, **env},
                               stdout=out, stderr=err, timeout=120)
    return subprocess.CompletedProcess(args, code, (cwd / "stdout").read_text(), (cwd / "stderr").read_text())


def no_room(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_no_room_for_the_frames_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    """The same full disk, injected (ENOSPC where the frames' space is reserved), on any system."""
    make_nmnist(tmp_path / "data", per_digit=1)
    monkeypatch.setattr(os, "posix_fallocate", no_room, raising=False)
    before = set(multiprocessing.active_children())
    proc = run_snnexp(*TRAIN, cwd=tmp_path, env={"SNNEXP_CACHE": str(tmp_path / "cache")}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (train,) = [line for line in proc.stderr.splitlines() if line.startswith("snnexp: error:")]
    assert train.startswith(f"snnexp: error: cannot write the frame cache {tmp_path / 'cache'}/nmnist-train-")
    assert train.endswith("No space left on device; free disk space there or set dataset.cache_dir (or SNNEXP_CACHE) "
                          "to a folder with room. Nothing of this build is kept")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]
    assert set(multiprocessing.active_children()) == before
    assert not (tmp_path / "run" / "metrics.json").exists()


# ----------------------------------------------------------------------- the workers end with the build

class SlowButCorrupt:
    """A corrupt file found at once, every other sample 5 s (a long recording, a slow denoise)."""

    def __call__(self, source):
        if source == "corrupt":
            raise CorruptFile("corrupt: not a recording")
        time.sleep(5)
        return np.zeros(SHAPE, dtype=np.uint16)


def test_a_build_stopped_by_an_error_ends_its_workers_at_once(tmp_path):
    """A corrupt file in a build with two workers: the error comes at once, with no worker left, not after the
    conversions under way have run (5 s here; it was so)."""
    before = set(multiprocessing.active_children())
    start = time.monotonic()
    with pytest.raises(CorruptFile, match="corrupt: not a recording"):
        FrameCache(tmp_path / "c", KEY).get_or_build(["corrupt", "1", "2", "3"], [0] * 4, SlowButCorrupt(), SHAPE, 2,
                                                     num_classes=3)
    assert time.monotonic() - start < 3
    # none of its own left (a child of an earlier test may have ended meanwhile: not an equality of the two sets)
    assert not set(multiprocessing.active_children()) - before


def build_slowly(root: str, log: str) -> None:
    """A build with two workers, 0.2 s a sample (run in a process of its own, to be killed)."""
    FrameCache(root, KEY).get_or_build([str(i) for i in range(200)], [0] * 200, FakeConvert(Path(log), delay=0.2),
                                       SHAPE, 2, num_classes=3)


def cli_slowly(log: str, *args: str) -> None:
    """`snnexp *args`, each N-MNIST recording's conversion logged to `log`, then 0.2 s slower; Ctrl-C as at a
    terminal (a process started in the background would ignore it)."""
    from snnexp import cli
    from snnexp.data import recordings

    convert = recordings.ToFrames.__call__

    def slowly(self, source):
        with open(log, "a") as f:
            f.write(f"{source}\n")
        time.sleep(0.2)
        return convert(self, source)

    recordings.ToFrames.__call__ = slowly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli.main(list(args))


def start(call: str, *args, cwd: Path, env: dict) -> subprocess.Popen:
    """`call` of this module in a Python of its own (in its own process group, as a shell starts a command)."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_full_disk_cache as t; t.{call}(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@LINUX_PROC
def test_workers_end_when_the_build_is_killed(tmp_path):
    """SIGKILL of the process building the cache: its workers end within seconds (before: they lived on, idle, a
    few hundred MB each)."""
    log, marker = tmp_path / "log", f"SNNEXP_TEST_BUILD={tmp_path}"
    build = start("build_slowly", tmp_path / "c", log, cwd=tmp_path, env={"SNNEXP_TEST_BUILD": str(tmp_path)})
    try:
        assert wait_for(lambda: conversions(log) >= 2, 60), build.communicate()
        assert len(processes_with(marker)) == 3  # it and its two workers
        build.kill()
        build.wait()
        assert wait_for(lambda: not processes_with(marker), 5)
    finally:
        build.kill()
        end(processes_with(marker))


@LINUX_PROC
def test_ctrl_c_during_a_cache_build_is_one_line_exit_130_and_leaves_no_worker(tmp_path):
    make_nmnist(tmp_path / "data", per_digit=2)
    log, marker = tmp_path / "log", f"SNNEXP_CACHE={tmp_path / 'cache'}"
    run = start("cli_slowly", log, *TRAIN, cwd=tmp_path, env={"SNNEXP_CACHE": str(tmp_path / "cache")})
    try:
        assert wait_for(lambda: conversions(log) >= 2, 60), run.communicate()
        os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C at a terminal: to snnexp and its workers
        _, stderr = run.communicate(timeout=60)
        assert wait_for(lambda: not processes_with(marker), 5)
    finally:
        run.kill()
        end(processes_with(marker))
    assert run.returncode == 130 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.splitlines()[-1].startswith("snnexp: ")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("nmnist-train-") and p.is_dir() and
                ".tmp-" not in p.name]  # no cache that looks built
