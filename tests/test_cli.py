"""The CLI end to end, as a user runs it, in a temporary directory."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_snnexp

FAST = ["trainer.epochs=2", "trainer.progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short default run on digits (the default dataset), shared by the tests below."""
    cwd = tmp_path_factory.mktemp("train")
    run_snnexp("train", *FAST, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def test_help_lists_commands_and_config_groups(tmp_path):
    out = run_snnexp("--help", cwd=tmp_path).stdout
    assert "train" in out and "eval" in out
    out = run_snnexp("train", "--help", cwd=tmp_path).stdout
    for line in ("neuron: alif, if, lif, masked_psn, plif, psn, sliding_psn, stbp",
                 "surrogate: atan, fast_sigmoid, rect, sigmoid, triangle",
                 "norm: bn, bntt, neunorm, none, sws, tdbn, tebn", "encoder: direct, latency, poisson",
                 "dataset: cifar10, cifar100, digits", "loss: ce_rate, mse_rate, tet",
                 "experiment: cramer_rsnn_shd, cramer_rsnn_ssc, deng_tet_dvs_cifar10, duan_tebn_dvs_cifar10",
                 "readout: membrane_last, membrane_max, membrane_mean, rate, voting",
                 "optim: adam, adamax, adamw, sgd"):
        assert line in out


def test_run_leaves_config_metrics_checkpoints_and_tensorboard(trained):
    assert (trained / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("test_acc", "best_test_acc", "epoch", "train_samples_per_s", "wall_s"):
        assert key in metrics
    assert metrics["epoch"] == 2
    assert metrics["best_test_acc"] >= metrics["test_acc"] > 0.3  # 10 classes: chance is 0.1

    for name in ("last.pt", "best.pt"):
        state = torch.load(trained / "checkpoints" / name, weights_only=True)
        for key in ("model", "optimizer", "scheduler", "epoch", "config"):
            assert key in state
        assert state["config"]["trainer"]["epochs"] == 2

    events = EventAccumulator(str(trained))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "train/acc", "test/loss", "test/acc", "lr"):
        assert tag in tags
        assert len(events.Scalars(tag)) == 2  # one point per epoch
    assert {t for t in tags if t.startswith(("firing_rate/", "tau/"))} == {  # the default convnet's 3 PLIF layers
        f"{what}/layer{k}" for what in ("firing_rate", "tau") for k in (1, 2, 3)}
    # the hparams session for the HPARAMS tab
    hp = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hp


def test_eval_reproduces_the_test_accuracy_of_the_checkpoint(trained, tmp_path):
    metrics = json.loads((trained / "metrics.json").read_text())
    for name, key in (("best.pt", "best_test_acc"), ("last.pt", "test_acc")):
        run_snnexp("eval", f"checkpoint={trained / 'checkpoints' / name}", "hydra.run.dir=ev", cwd=tmp_path)
        evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert evaluated["test_acc"] == pytest.approx(metrics[key], abs=1e-9)


def test_poisson_run_and_eval_agree(tmp_path):
    """A stochastic encoder is evaluated with its own seeded generator: eval gives the training run's number."""
    run_snnexp("train", "encoder=poisson", "model=mlp", "trainer.T=8", "trainer.epochs=1", "hydra.run.dir=run",
               cwd=tmp_path)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    run_snnexp("eval", "checkpoint=run/checkpoints/last.pt", "hydra.run.dir=ev", cwd=tmp_path)
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["test_acc"] == pytest.approx(trained["test_acc"], abs=1e-9)


def test_multirun_sweep_leaves_one_named_directory_per_job(tmp_path):
    run_snnexp("train", "-m", "neuron=lif,plif", "trainer.epochs=1", "trainer.max_steps=3", "hydra.sweep.dir=sweep",
               cwd=tmp_path)
    # beside them the sweep's HPARAMS table (report/hparams.py: the sweep folder is this run's log folder)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name != "hparams-table")
    # Hydra's override_dirname: every override of the job, so the names differ where the jobs differ
    assert runs == ["neuron=lif,trainer.epochs=1,trainer.max_steps=3",
                    "neuron=plif,trainer.epochs=1,trainer.max_steps=3"]
    for run in runs:
        metrics = json.loads((tmp_path / "sweep" / run / "metrics.json").read_text())
        assert metrics["step"] == 3
    lif_cfg = (tmp_path / "sweep" / runs[0] / ".hydra" / "config.yaml").read_text()
    assert "snnexp.nn.neurons.LIF" in lif_cfg
    # a job's folder, named with '=' and ',' (Hydra's override syntax), given as a path: resume it for one step more
    run_snnexp("train", f"resume=sweep/{runs[0]}", "trainer.max_steps=4", cwd=tmp_path)
    assert json.loads((tmp_path / "sweep" / runs[0] / "metrics.json").read_text())["step"] == 4


def test_default_run_directory_names_say_what_it_is(tmp_path):
    run_snnexp("train", "neuron=lif", "trainer.T=2", "trainer.epochs=1", "trainer.max_steps=1", cwd=tmp_path)
    (run,) = (tmp_path / "outputs" / "digits").iterdir()
    assert run.name.endswith("_convnet-lif-T2")


def test_voting_readout_with_a_population_network(tmp_path):
    run_snnexp("train", "readout=voting", 'model.spec="{c8k3s1-BN-SN-MPk2s2}*2-FC100-SN"', "trainer.epochs=1",
               "trainer.max_steps=2", "hydra.run.dir=run", cwd=tmp_path)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"][max(k for k in state["model"] if k.endswith(".module.weight"))].shape[0] == 100


# Bad input of every kind (messages, exit codes, nothing damaged): tests/test_bad_input.py


def test_missing_dataset_says_where_to_put_which_files(tmp_path):
    proc = run_snnexp("train", "dataset=mnist", f"dataset.data_dir={tmp_path / 'nodata'}", "dataset.download=false",
                      cwd=tmp_path, check=False)
    out = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out
    assert f"{tmp_path / 'nodata' / 'MNIST' / 'raw'}/" in out
    for name, md5 in (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                      ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")):
        assert name in out and md5 in out


def test_data_dir_is_relative_to_where_snnexp_started(tmp_path):
    proc = run_snnexp("train", "dataset=fashion_mnist", "dataset.download=false", cwd=tmp_path, check=False)
    assert f"{tmp_path / 'data' / 'FashionMNIST' / 'raw'}/" in proc.stderr


def test_user_config_folder_joins_the_search_path(tmp_path):
    conf = tmp_path / "my_conf" / "neuron"
    conf.mkdir(parents=True)
    (conf / "slow_lif.yaml").write_text("defaults:\n  - lif\n  - _self_\ntau: 10.0\n")
    run_snnexp("train", "--config-dir", "my_conf", "neuron=slow_lif", "trainer.epochs=1", "trainer.max_steps=1",
               "hydra.run.dir=run", cwd=tmp_path)
    assert "tau: 10.0" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_convnet_learns_real_mnist(tmp_path, real_mnist):
    run_snnexp("train", "dataset=mnist", f"dataset.data_dir={real_mnist}", "trainer.epochs=1",
               "trainer.max_steps=300", "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.9, metrics  # chance is 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_a_clear_error(tmp_path):
    proc = run_snnexp("train", "trainer.device=cuda", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "device cuda asked for, but no CUDA device is available: use device=cpu or auto" in proc.stderr
