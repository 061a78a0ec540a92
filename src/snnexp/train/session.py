"""A training session: what it records about itself (run_info.json: command line, versions, the project's commit,
one entry per session of a resumed run) and how it stops when asked (StopSignals: Ctrl-C or SIGTERM finish the
current step, save, and end the run with `errors.Interrupted`)."""

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from snnexp.errors import CheckpointError, Interrupted
from snnexp.train import distributed
from snnexp.train.checkpoint import write_json

VERSIONS_OF = ("snnexp", "torch", "torchvision", "hydra-core", "omegaconf", "tonic", "numpy", "tensorboard")


def _git_commit() -> Optional[str]:
    """The commit of the source snnexp runs from ('-dirty' with uncommitted changes), or None outside git."""
    source = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_info(cfg: DictConfig, resumed_from: Optional[Path]) -> Dict[str, Any]:
    """What makes a run reproducible besides its config: command line, versions, the project's commit."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for pkg in VERSIONS_OF:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"command": " ".join(sys.argv),  # the CLI sets argv[0] to "snnexp <command>"
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": str(resumed_from) if resumed_from else None,
            "versions": versions, "git_commit": _git_commit(), "host": platform.node(),
            "threads": torch.get_num_threads()}


def record(run_dir: Path, cfg: DictConfig, resumed_from: Optional[Path]) -> None:
    """Add this session to the run's run_info.json (rank 0 only)."""
    if not distributed.is_main():
        return
    path = run_dir / "run_info.json"
    sessions = json.loads(path.read_text()) if resumed_from is not None and path.is_file() else []
    write_json(path, [*sessions, run_info(cfg, resumed_from)])


class StopNow(KeyboardInterrupt):
    """A second SIGINT / SIGTERM while training: stop at once. A KeyboardInterrupt, which no `except Exception`
    swallows and which files.atomic_path answers by removing the file it was writing; the CLI says it in a line and
    exits with 128 + `signum`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """While training: the first SIGINT / SIGTERM only asks the loop to stop after the current step; a second one
    stops at once (StopNow), even while that step's checkpoint is being written."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum

    def requested(self) -> bool:
        """A stop was asked for, here or (data parallel) in any other process, so that all stop at the same step;
        a process that got no signal of its own stops as if by SIGTERM."""
        if distributed.any_true(self.received is not None) and self.received is None:
            self.received = signal.SIGTERM
        return self.received is not None

    def interrupted(self, where: str) -> Interrupted:
        name = signal.Signals(self.received).name
        return Interrupted(name, self.received, f"{name} {where}")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunLock:
    """Held for the whole of a training session: a second training in the same run folder (two resumes of one run)
    is refused, naming the process that holds it, instead of both writing each other's checkpoints. An OS lock
    (filelock: flock), which the OS drops when its holder dies, so the file left by a killed run never blocks; the
    file holds the holder's PID while it is held. Data parallel: rank 0 holds it for all processes."""

    NAME = "train.lock"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / self.NAME
        self._lock = FileLock(self.path)

    def __enter__(self):
        error = None
        if distributed.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._lock.acquire(timeout=0)
                self._write(f"{os.getpid()}\n")
            except Timeout:
                error = (f"the run directory {self.path.parent} is in use: {self._holder()} trains in it now (it "
                         f"holds {self.NAME}); wait for it to end, or stop it, then try again")
        error = distributed.from_main(error)  # all processes stop, not only rank 0
        if error:
            raise CheckpointError(error)
        return self

    def _holder(self) -> str:
        try:
            return f"snnexp process {int(self.path.read_text())}"
        except (OSError, ValueError):  # it has locked the file but not yet written its PID
            return "another snnexp process"

    def _write(self, text: str) -> None:
        try:
            self.path.write_text(text)
        except OSError:  # a full disk: the lock holds all the same, only the PID is not shown to others
            pass

    def __exit__(self, *exc):
        if self._lock.is_locked:
            self._write("")  # an empty file: held by no one
            self._lock.release()
        return False
