"""Sweeps in parallel on one machine (hydra/launcher=joblib), and their table (`snnexp compare`)."""

import json

from conftest import run_snnexp


def test_joblib_sweep_runs_jobs_in_parallel_each_in_its_own_directory_with_its_share_of_cores(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    run_snnexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "neuron=lif,plif",
               "trainer.epochs=1", "trainer.max_steps=3", "trainer.progress=false", cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name.split(",")[0] for j in jobs] == ["neuron=lif", "neuron=plif"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["step"] == 3
        (info,) = json.loads((job / "run_info.json").read_text())
        assert info["threads"] == max(1, cores // 2)
    out = run_snnexp("compare", str(sweep), cwd=tmp_path).stdout
    assert "neuron=lif" in out and "neuron=plif" in out and (sweep / "compare.csv").is_file()
