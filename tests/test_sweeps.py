"""Sweeps in parallel on one machine (hydra/launcher=joblib), and their table (`snnexp compare`, also printed and saved
when a sweep ends: snnexp.report.sweep)."""

import csv
import json

import pytest

from conftest import run_snnexp


def test_joblib_sweep_runs_jobs_in_parallel_each_in_its_own_directory_with_its_share_of_cores(tmp_path):
    import os

    from test_compare import table_rows

    cores = len(os.sched_getaffinity(0))
    proc = run_snnexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "neuron=lif,plif",
               "trainer.epochs=1", "trainer.max_steps=3", "trainer.progress=false", cwd=tmp_path, process=True)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name.split(",")[0] for j in jobs] == ["neuron=lif", "neuron=plif"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["step"] == 3
        (info,) = json.loads((job / "run_info.json").read_text())
        assert info["threads"] == max(1, cores // 2)
    assert (sweep / "compare.txt").read_text() in proc.stdout  # the sweep's table, at its end
    out = run_snnexp("compare", str(sweep), cwd=tmp_path).stdout
    assert sorted(r[0] for r in table_rows(out)[1:]) == ["lif", "plif"] and (sweep / "compare.csv").is_file()


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


def test_a_sweep_ends_with_its_table_of_runs_its_seeds_merged(tmp_path):
    """`-m neuron=lif,plif trainer.seed=0,1`: two rows, each the mean ± sample std of its two seeds, printed and saved
    in the sweep folder; `snnexp compare` on that folder prints the same table."""
    from statistics import mean, stdev

    from test_compare import table_rows

    proc = run_snnexp("train", "-m", "neuron=lif,plif", "trainer.seed=0,1", "trainer.epochs=1", "trainer.max_steps=2",
                      "trainer.progress=false", cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    text = (sweep / "compare.txt").read_text()
    assert text in proc.stdout and (sweep / "compare.md").is_file()
    header, *rows = table_rows(text)
    assert header[:3] == ["neuron", "n", "best acc %"] and sorted(r[:2] for r in rows) == [["lif", "2"], ["plif", "2"]]
    for r in rows:
        jobs = sweep.glob(f"neuron={r[0]},*")
        best = [json.loads((job / "metrics.json").read_text())["best_test_acc"] for job in jobs]
        assert r[2] == f"{100 * mean(best):.2f} ± {100 * stdev(best):.2f}"
    per_run = list(csv.DictReader((sweep / "compare.csv").open()))
    assert len(per_run) == 4 and {row["status"] for row in per_run} == {"done"}
    again = run_snnexp("compare", str(sweep), cwd=tmp_path).stdout
    assert again.startswith(text) and max(len(line) for line in text.splitlines()) <= 120


def test_a_table_that_cannot_be_saved_is_one_warning_and_the_sweep_still_succeeds(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "compare.csv").mkdir(parents=True)  # where the table would go: a folder
    proc = run_snnexp("train", "-m", f"hydra.sweep.dir={sweep}", "neuron=lif", "trainer.epochs=1",
                      "trainer.max_steps=1", "trainer.progress=false", cwd=tmp_path)  # exit 0, or it raises
    (warning,) = [line for line in proc.stderr.splitlines() if line.startswith("snnexp: warning:")]
    assert warning.startswith(f"snnexp: warning: the sweep's table was not saved: cannot write the table into {sweep}")
    assert "best acc %" in proc.stdout  # printed all the same


def test_the_sweep_table_only_warns_when_no_table_can_be_made(tmp_path, capsys, monkeypatch):
    """Called by Hydra at the end of a sweep whose runs are all damaged (or whose folder is gone): one warning line
    after the warnings that name the damaged runs, no exception, so Hydra's exit status stands. Under torchrun only
    rank 0 prints."""
    from omegaconf import OmegaConf

    from snnexp.report.sweep import SweepTable
    from test_compare import fake_run, metrics

    for name in ("a", "b"):
        fake_run(tmp_path / "s" / name, ["neuron=lif"], 3)
        (tmp_path / "s" / name / "metrics.json").write_text('{"epoch": 3, "best_test')
    SweepTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "s")}}}))
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 3  # a warning per damaged run, then one that there is no table
    assert err.splitlines()[-1].startswith("snnexp: warning: no table of the sweep: no runs to compare under ")
    SweepTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}}))
    assert capsys.readouterr().err == f"snnexp: warning: no table of the sweep: {tmp_path / 'gone'} does not exist\n"
    fake_run(tmp_path / "ok" / "a", ["neuron=lif"], 3, metrics(3, 0.9, 0.9, {}))
    monkeypatch.setenv("RANK", "1")
    SweepTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "ok")}}}))
    assert capsys.readouterr() == ("", "") and not (tmp_path / "ok" / "compare.csv").exists()


def test_a_single_run_prints_no_table(tmp_path):
    proc = run_snnexp("train", "trainer.epochs=1", "trainer.max_steps=1", "trainer.progress=false", cwd=tmp_path)
    assert "best acc %" not in proc.stdout and not list(tmp_path.rglob("compare.*"))
