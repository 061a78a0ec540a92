"""Sweeps in parallel on one machine (hydra/launcher=joblib), and their table (`snnexp compare`)."""

import json

import pytest

from conftest import run_snnexp


def test_joblib_sweep_runs_jobs_in_parallel_each_in_its_own_directory_with_its_share_of_cores(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    run_snnexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "neuron=lif,plif",
               "trainer.epochs=1", "trainer.max_steps=3", "trainer.progress=false", cwd=tmp_path, process=True)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name.split(",")[0] for j in jobs] == ["neuron=lif", "neuron=plif"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["step"] == 3
        (info,) = json.loads((job / "run_info.json").read_text())
        assert info["threads"] == max(1, cores // 2)
    out = run_snnexp("compare", str(sweep), cwd=tmp_path).stdout
    assert "neuron=lif" in out and "neuron=plif" in out and (sweep / "compare.csv").is_file()


def test_optuna_search_runs_trials_and_prints_the_best(tmp_path):
    out = run_snnexp("train", "-m", "hparams_search=digits_tpe", "hydra.sweeper.n_trials=2", "trainer.epochs=1",
                     "trainer.max_steps=2", "trainer.progress=false", cwd=tmp_path, process=True)
    log = out.stdout + out.stderr
    assert "Sampler: TPESampler" in log and "Best parameters: {'optim.lr':" in log and "Best value:" in log
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params:" in results and "neuron.tau0:" in results and "surrogate.alpha:" in results
    assert len([p for p in sweep.iterdir() if (p / "metrics.json").is_file()]) == 2


def test_slurm_launcher_composes_with_the_usual_knobs(tmp_path):
    out = run_snnexp("train", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=120",
                     "hydra.launcher.array_parallelism=8", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path)
    text = out.stdout
    for line in ("partition: gpu", "gpus_per_node: 1", "timeout_min: 120", "array_parallelism: 8",
                 "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"):
        assert line in text, text


@pytest.mark.slow  # about 20 s
def test_submitit_local_executor_runs_a_sweep(tmp_path):
    """The same launcher plugin with submitit's local executor: jobs run as submitit jobs, results come back."""
    run_snnexp("train", "-m", "hydra/launcher=submitit_local", "neuron=lif,plif", "trainer.epochs=1",
               "trainer.max_steps=2", "trainer.progress=false", cwd=tmp_path, process=True)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert len([p for p in sweep.iterdir() if (p / "metrics.json").is_file()]) == 2
    assert (sweep / ".submitit").is_dir()
