import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_snnexp(*args, cwd, timeout=600, check=True, env=None):
    """Run the CLI as a user would (`python -m snnexp ...`) in `cwd`, with `env` added to the environment;
    returns the CompletedProcess."""
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "snnexp", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snnexp {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_snnexp_here(*args, cwd, env=None):
    """Run the CLI in this process, as `snnexp ...` would run in `cwd` with `env` added to the environment: the
    same code from `cli.main` on, without starting Python and importing torch again (seconds per call). Returns
    a CompletedProcess with the exit code and what was printed. For cases that end in the CLI's own exit
    path; a run that needs its own process (signals, torchrun, a clean import) uses run_snnexp."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from hydra.core.global_hydra import GlobalHydra

    from snnexp import cli

    saved = os.getcwd(), dict(os.environ), sys.argv, logging.root.handlers[:], logging.root.level
    os.chdir(cwd)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env or {})
    sys.argv = ["snnexp", *args]
    out, err, code = StringIO(), StringIO(), 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(saved[0])
        os.environ.clear()
        os.environ.update(saved[1])
        sys.argv = saved[2]
        logging.root.handlers[:], logging.root.level = saved[3], saved[4]
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(["snnexp", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def real_mnist(shared_data, tmp_path, monkeypatch):
    """A data_dir whose MNIST/raw/ links to the real files; snnexp extracts the .gz files into the cache
    ($SNNEXP_CACHE, set to tmp_path/cache for the test's runs) and never writes into the data folder."""
    monkeypatch.setenv("SNNEXP_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "real_data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (shared_data / "MNIST" / "raw").glob("*.gz"):
        (raw / gz.name).symlink_to(gz)
    return tmp_path / "real_data"
