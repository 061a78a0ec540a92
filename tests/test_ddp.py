"""Data parallel training (trainer.strategy=ddp) as a user launches it: torchrun with 2 CPU processes (gloo),
compared with one process at the same global batch."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_snnexp

# IF neurons without normalisation: every process's gradient is the mean over its half of the batch, so the
# averaged gradient is exactly the one-process gradient (BN would normalise each half with its own statistics).
# (PLIF without normalisation does not fire on digits at all, so it would not learn in either setting.)
NET = ["neuron=if", "norm=none", "trainer.progress=false"]


def torchrun(*args, cwd, nproc=2, check=True):
    """`torchrun --standalone --nproc_per_node=N -m snnexp ...` as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "snnexp", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun snnexp {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_processes_take_the_same_optimizer_steps_as_one_process_and_a_sweep_shares_one_directory(tmp_path):
    run_snnexp("train", *NET, "trainer.max_steps=10", "hydra.run.dir=one", cwd=tmp_path)
    # a Hydra sweep of data-parallel runs: every job on both processes, one after another
    out = torchrun("train", "-m", *NET, "trainer.strategy=ddp", "trainer.max_steps=9,10", cwd=tmp_path)
    assert "data parallel: 2 processes, 32 samples each per step (global batch 64)" in out.stdout + out.stderr

    # no stray run directories; beside the sweeps, the HPARAMS table of the log folder (report/hparams.py)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["hparams-table", "multirun"]
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = {p.name: p for p in sweeps[0].iterdir() if p.is_dir()}
    assert len(jobs) == 2, jobs
    ddp = next(p for name, p in jobs.items() if "max_steps=10" in name)
    less = next(p for name, p in jobs.items() if "max_steps=9" in name)
    assert json.loads((ddp / "metrics.json").read_text())["step"] == 10
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes TensorBoard

    one, ddp, less = weights(tmp_path / "one"), weights(ddp), weights(less)
    assert one.keys() == ddp.keys()
    for name in one:
        # float32 sums in a different order: measured 4e-8; one optimizer step moves the weights by far more
        assert torch.allclose(one[name], ddp[name], rtol=0, atol=1e-6), name
        assert (one[name] - less[name]).abs().max() > 1e-4, name


@pytest.mark.slow  # 25 s; the test above already shows the steps are the same
def test_two_processes_give_the_accuracy_curve_of_one_process_and_rank_0_alone_writes(tmp_path):
    run_snnexp("train", *NET, "trainer.epochs=3", "hydra.run.dir=one", cwd=tmp_path)
    out = torchrun("train", *NET, "trainer.epochs=3", "trainer.strategy=ddp", cwd=tmp_path)
    log = out.stdout + out.stderr
    assert log.count("epoch 3/3") == 1  # only rank 0 reports

    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs  # both processes agree on one run directory
    ddp = runs[0]
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1
    assert (ddp / "train.log").read_text().count("epoch 3/3") == 1

    def curve(run_dir):
        events = EventAccumulator(str(run_dir))
        events.Reload()
        return [e.value for e in events.Scalars("test/acc")]

    one_curve, ddp_curve = curve(tmp_path / "one"), curve(ddp)
    assert len(one_curve) == len(ddp_curve) == 3
    assert ddp_curve[-1] > 0.5  # it learns (chance is 0.1)
    # Tolerance 2.5 points per epoch (measured: at most 1.1). The steps are the same but for the last batch of
    # an epoch: 1437 training samples are padded to 1438 so that each process gets 719 (as DistributedSampler
    # does), and spike thresholds turn float rounding differences into a few different spikes.
    for a, b in zip(one_curve, ddp_curve):
        assert abs(a - b) <= 0.025, (one_curve, ddp_curve)


@pytest.mark.slow  # 3 torchrun launches, 25 s
def test_a_data_parallel_run_resumed_mid_epoch_equals_the_run_never_stopped(tmp_path):
    args = [*NET, "trainer.strategy=ddp"]
    torchrun("train", *args, "trainer.max_steps=10", "hydra.run.dir=straight", cwd=tmp_path)
    torchrun("train", *args, "trainer.max_steps=5", "hydra.run.dir=resumed", cwd=tmp_path)
    out = torchrun("train", "resume=resumed", "trainer.max_steps=10", cwd=tmp_path)
    assert "resumed from" in out.stdout + out.stderr and "batch 5, step 5" in out.stdout + out.stderr
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for name in straight:  # measured: bit for bit
        assert torch.equal(straight[name], resumed[name]), name


@pytest.mark.parametrize("args, launcher, message", [
    (["trainer.strategy=ddp"], False, "torchrun"),
    (["trainer.max_steps=1"], True, "trainer.strategy=ddp"),
    (["trainer.strategy=ddp", "trainer.batch_size=63"], True, "must divide evenly among the 2 processes"),
])
def test_bad_data_parallel_settings_are_refused_with_the_fix(tmp_path, args, launcher, message):
    run = torchrun if launcher else run_snnexp
    proc = run("train", *args, cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "snnexp: error:" in out and message in out, out
    # torchrun reports a failed process with its own traceback; none may come from snnexp's code
    assert not re.search(r'File "[^"]*snnexp[/\\]', out), out
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/*.pt"))


def test_ddp_is_refused_with_launchers_and_sweepers_that_would_run_each_job_once_per_process(monkeypatch):
    from snnexp.train import distributed

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, before the process group is up
    basic_launcher = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    basic_sweeper = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert distributed.check("ddp", 64, basic_launcher, basic_sweeper) is None
    problem = distributed.check("ddp", 64, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                basic_sweeper)
    assert "JoblibLauncher" in problem and "basic launcher" in problem
    problem = distributed.check("ddp", 64, basic_launcher, "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper."
                                "OptunaSweeper")
    assert "OptunaSweeper" in problem and "run the search without DDP" in problem
