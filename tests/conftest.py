import io
import logging
import os
import random
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_snnexp(*args, cwd, timeout=600, check=True, env=None, process=False):
    """Run the CLI as a user would (`snnexp ...`) in `cwd`, with `env` added to the environment; returns a
    CompletedProcess (exit code, what was printed), and with `check` fails on a non-zero exit.

    By default in this process, from `cli.main` on (the code `python -m snnexp` runs), which saves starting Python
    and importing torch, 4 s per call on 2 cores; working folder, environment, argv, logging, Hydra's global
    state, torch's threads, determinism switch and random generators are restored after it. `process=True`
    starts `python -m snnexp` instead: for what needs a process of its own (its imports, a launcher that forks,
    an environment read at import)."""
    proc = _run_process(args, cwd, timeout, env) if process else _run_here(args, cwd, env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snnexp {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_process(args, cwd, timeout, env):
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
    return subprocess.run([sys.executable, "-m", "snnexp", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _run_here(args, cwd, env):
    from hydra.core.global_hydra import GlobalHydra

    from snnexp import cli

    saved = _process_state()
    os.chdir(cwd)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env or {})
    sys.argv = ["snnexp", *args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with warnings.catch_warnings(), redirect_stdout(out), redirect_stderr(err):
            cli.main(list(args))
    except SystemExit as e:  # as the interpreter ends a process: a message is printed, and exits 1
        if isinstance(e.code, str):
            err.write(e.code + "\n")
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        _restore(saved)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(["snnexp", *args], code, out.getvalue(), err.getvalue())


def _process_state():
    import numpy as np
    import torch

    return dict(cwd=os.getcwd(), environ=dict(os.environ), argv=sys.argv, handlers=logging.root.handlers[:],
                level=logging.root.level, threads=torch.get_num_threads(),
                deterministic=torch.are_deterministic_algorithms_enabled(), torch_rng=torch.get_rng_state(),
                numpy_rng=np.random.get_state(), random_rng=random.getstate())


def _restore(saved):
    import numpy as np
    import torch

    os.chdir(saved["cwd"])
    os.environ.clear()
    os.environ.update(saved["environ"])
    sys.argv = saved["argv"]
    for handler in logging.root.handlers:
        if handler not in saved["handlers"]:
            handler.close()  # the run's train.log
    logging.root.handlers[:], logging.root.level = saved["handlers"], saved["level"]
    torch.set_num_threads(saved["threads"])
    torch.use_deterministic_algorithms(saved["deterministic"])
    torch.set_rng_state(saved["torch_rng"])
    np.random.set_state(saved["numpy_rng"])
    random.setstate(saved["random_rng"])


@pytest.fixture
def one_thread():
    """One torch thread: faster than two on small tensors, and much faster on busy shared cores (the thread count is
    restored after every test, above)."""
    import torch

    torch.set_num_threads(1)


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


@pytest.fixture
def count_joins(monkeypatch):
    """How often a FusedBlock has handed a BN to the joined ops (snnexp.ops.normalised)."""
    import snnexp.nn.fusion

    calls = []
    real = snnexp.nn.fusion.batch_norm

    def counted(*args, **kwargs):
        norm = real(*args, **kwargs)
        calls.extend([norm] if norm is not None else [])
        return norm

    monkeypatch.setattr(snnexp.nn.fusion, "batch_norm", counted)
    return lambda: len(calls)
