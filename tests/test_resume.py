"""Runs that survive interruption and reproduce exactly (issue 6): a run killed with SIGKILL and resumed ends
with the same metrics and weights as one never interrupted; SIGTERM saves and says how to resume; a sweep
resumes job by job; the same seed gives the same numbers; every run records how it was made."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import run_snnexp
from snnexp.cli import conf_dir
from snnexp.train.loop import fit

# Poisson input and a 2-epoch run: the RNG state and the data order both matter for the result
ARGS = ["trainer.epochs=2", "trainer.ckpt_every_steps=5", "trainer.progress=false", "encoder=poisson", "trainer.T=8"]
TIMING = ("wall_s", "train_samples_per_s")


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "snnexp", "train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(pattern, cwd, proc, timeout=120, epochs_done=0):
    """The first mid-epoch checkpoint (batch > 0) after `epochs_done` epochs matching pattern under cwd."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in Path(cwd).glob(pattern):
            try:
                state = torch.load(path, weights_only=True)
                if state["batch"] > 0 and state["epoch"] == epochs_done:
                    return path
            except Exception:  # being replaced right now
                pass
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


def same_results(a: Path, b: Path):
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    wa, wb = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def scalar_steps(run_dir: Path, tag: str) -> list:
    """Every step at which `tag` was logged, over all of the run's event files, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def scalar_values(run_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_sigkill_mid_epoch_then_resume_equals_the_run_never_interrupted(tmp_path):
    run_snnexp("train", *ARGS, "hydra.run.dir=whole", cwd=tmp_path)
    proc = start([*ARGS, "hydra.run.dir=cut"], tmp_path)
    ckpt = wait_for_checkpoint("cut/checkpoints/last.pt", tmp_path, proc, epochs_done=1)  # in epoch 2
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch"]
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["epoch"] == 1
    out = run_snnexp("train", *ARGS, "hydra.run.dir=cut", "resume=true", cwd=tmp_path)
    assert f"resumed from {tmp_path / 'cut' / 'checkpoints' / 'last.pt'}: epoch 2, batch {state['batch']}" in \
        out.stdout + out.stderr
    same_results(tmp_path / "whole", tmp_path / "cut")
    assert scalar_steps(tmp_path / "cut", "test/acc") == [1, 2]  # the curve goes on: no gap, no duplicate
    # and so does the per-step loss, point for point the uninterrupted run's
    whole, cut = (scalar_values(tmp_path / run / "steps", "train/loss_step") for run in ("whole", "cut"))
    assert [step for step, _ in cut] == list(range(1, 2 * 23 + 1)) and cut == whole  # 23 steps an epoch
    sessions = json.loads((tmp_path / "cut" / "run_info.json").read_text())
    assert len(sessions) == 2 and sessions[1]["resumed_from"].endswith("last.pt")


def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path):
    proc = start(ARGS, tmp_path)
    wait_for_checkpoint("outputs/digits/*/checkpoints/last.pt", tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    run_dir = next((tmp_path / "outputs" / "digits").iterdir())
    assert "snnexp: interrupted by SIGTERM at step" in err and "Traceback" not in err
    assert f"resume with:  snnexp train {' '.join(ARGS)} resume=true" in err
    assert f"or:  snnexp train resume={run_dir}" in err
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["batch"] > 0
    run_snnexp("train", *ARGS, "resume=true", cwd=tmp_path)  # finds the run by its overrides
    assert json.loads((run_dir / "metrics.json").read_text())["epoch"] == 2
    assert len(list((tmp_path / "outputs" / "digits").iterdir())) == 1  # no new run directory


@pytest.mark.slow  # about 40 s; the single-run tests above cover the same code
def test_an_interrupted_sweep_resumes_job_by_job(tmp_path):
    sweep = ["-m", "neuron=lif,plif", *ARGS]
    proc = start(sweep, tmp_path)
    wait_for_checkpoint("outputs/multirun/*/*neuron=plif*/checkpoints/last.pt", tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "resume=true" in err
    out = run_snnexp("train", *sweep, "resume=true", cwd=tmp_path)
    assert "nothing left to train" in out.stdout + out.stderr  # the lif job had finished
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*neuron=*"))
    assert len(jobs) == 2 and all(json.loads((j / "metrics.json").read_text())["epoch"] == 2 for j in jobs)
    run_snnexp("train", "neuron=plif", *ARGS, "hydra.run.dir=plif_whole", cwd=tmp_path)
    same_results(tmp_path / "plif_whole", next(j for j in jobs if "neuron=plif" in j.name))


def test_resume_path_takes_the_runs_own_overrides(tmp_path):
    short = [a for a in ARGS if not a.startswith("trainer.epochs")] + ["trainer.epochs=1"]
    run_snnexp("train", *short, "trainer.max_steps=7", "hydra.run.dir=run", cwd=tmp_path)
    out = run_snnexp("train", "resume=run", "trainer.max_steps=null", cwd=tmp_path)
    assert "resumed from" in out.stdout + out.stderr
    cfg = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")  # the run's own config, untouched
    assert cfg.trainer.T == 8 and cfg.encoder._target_.endswith("PoissonEncoder") and cfg.trainer.max_steps == 7
    (resumed,) = (tmp_path / "run" / ".hydra").glob("resume-*/config.yaml")
    assert OmegaConf.load(resumed).trainer.max_steps is None and OmegaConf.load(resumed).trainer.T == 8
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 23


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["trainer.progress=false", *overrides])


def test_the_same_seed_gives_the_same_numbers(tmp_path):
    """Data order, Poisson encoding, dropout (the mlp has it) and initialisation all come from the seed."""
    cfg = compose_train("encoder=poisson", "model=mlp", "trainer.epochs=1")
    a = fit(cfg, tmp_path / "a", hparams={})
    b = fit(cfg, tmp_path / "b", hparams={})
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    c = fit(compose_train("encoder=poisson", "model=mlp", "trainer.epochs=1", "trainer.seed=1"), tmp_path / "c", {})
    assert c["train_loss"] != a["train_loss"]


def test_every_run_records_command_versions_and_commit(tmp_path):
    run_snnexp("train", "trainer.epochs=1", "trainer.max_steps=1", "hydra.run.dir=run", cwd=tmp_path)
    (info,) = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["command"] == "snnexp train trainer.epochs=1 trainer.max_steps=1 hydra.run.dir=run"
    assert info["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "hydra-core" in info["versions"] and "snnexp" in info["versions"]
    assert info["git_commit"] is None or len(info["git_commit"].split("-")[0]) == 40
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()  # the resolved config, by Hydra


def test_nonfinite_numbers_stop_with_a_diagnosis_or_are_skipped(tmp_path):
    proc = run_snnexp("train", "optim.lr=1e36", "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("snnexp: error: non-finite gradient at step 2 (epoch 1, batch 2): it first appears "
                              "in the output of layer 1 (BatchNormOverTime). Likely causes: a learning rate too "
                              "high (optim.lr=1e+36)")
    assert message.endswith("To leave such batches out instead of stopping: trainer.on_nonfinite=skip; "
                            "no checkpoint had been written yet")
    out = run_snnexp("train", "optim.lr=1e36", "trainer.epochs=1", "trainer.on_nonfinite=skip", "hydra.run.dir=skip",
                     cwd=tmp_path)
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["skipped_batches"] > 0 and metrics["step"] == 23 - metrics["skipped_batches"]
    assert "batches with a non-finite loss or gradient were skipped" in out.stdout + out.stderr


def test_deterministic_switch_trains(tmp_path):
    cfg = compose_train("trainer.deterministic=true", "trainer.epochs=1", "trainer.max_steps=2")
    try:
        assert fit(cfg, tmp_path, hparams={})["step"] == 2
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_full_disk_at_a_checkpoint_is_reported_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from snnexp.train import checkpoint

    cfg = compose_train("trainer.epochs=2")
    fit(cfg, tmp_path, hparams={})
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError) as err:
        fit(compose_train("trainer.epochs=3"), tmp_path, {}, resume=tmp_path / "checkpoints" / "last.pt")
    assert str(err.value) == (f"cannot write checkpoint {tmp_path / 'checkpoints' / 'last.pt'}: No space left on "
                              "device (free disk space, or give hydra.run.dir=... elsewhere); the previous checkpoint "
                              "is intact")
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    assert not list((tmp_path / "checkpoints").glob("last.pt.tmp*"))  # the partial file was removed
