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
