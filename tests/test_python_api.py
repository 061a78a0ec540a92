"""snnexp from Python (issue 32): compose, fit, load; the example script runs as the docs show it."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snnexp
from snnexp.errors import CheckpointError, ConfigError
from test_fusion import OLD_RUN  # a run folder of `snnexp train trainer.epochs=1`, with its TensorBoard events
from test_trust import crafted_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_compose_gives_the_config_the_command_runs_with():
    cfg = snnexp.compose(["neuron=lif", "trainer.T=6"])
    assert cfg.neuron._target_ == "snnexp.nn.neurons.LIF" and cfg.trainer.T == 6
    assert cfg.dataset._target_ == "snnexp.data.digits"  # conf/train.yaml's defaults


@pytest.mark.parametrize("overrides, says", [
    (["trainer.T=0"], "trainer.T=0 is out of range"),
    (["readout=membrane_max", "loss=mse_rate", "model=mlp"], "use loss=ce_rate"),
    (["neuron=nope"], "neuron"),
])
def test_compose_refuses_what_the_command_refuses(overrides, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        snnexp.compose(overrides)


def test_a_loaded_run_holds_its_config_network_metrics_and_curves(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)  # a run folder written by `snnexp train trainer.epochs=1`
    loaded = snnexp.load(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert loaded.checkpoint == run / "checkpoints" / "best.pt" and loaded.metrics == metrics
    assert loaded.config.trainer.epochs == 1 and loaded.epoch == 1 and loaded.num_classes == 10
    assert [step for step, _ in loaded.scalars("test/acc")] == [1]
    assert loaded.scalars("test/acc")[0][1] == pytest.approx(metrics["test_acc"])
    with torch.no_grad():  # the network runs: [T, B, 1, 8, 8] -> [T, B, 10] spikes
        assert loaded.model(torch.rand(4, 2, 1, 8, 8)).shape == (4, 2, 10)
    assert snnexp.load(run / "checkpoints" / "last.pt").run_dir == run


def test_load_refuses_a_checkpoint_that_names_foreign_targets(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    with pytest.raises(CheckpointError, match="never code"):
        snnexp.load(crafted_checkpoint(run, tmp_path))
    assert not (tmp_path / "ran").exists()


def test_load_names_a_folder_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.pt or last.pt"):
        snnexp.load(tmp_path)


def test_the_example_script_runs_and_its_numbers_agree(tmp_path):
    """examples/python_api.py, as docs/python.md shows it: the checkpoint tested again scores what training
    reported for its epoch."""
    out = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    best = re.search(r"best test accuracy ([\d.]+)% at epoch (\d)", out.stdout)
    per_epoch = re.findall(r"epoch (\d): test accuracy ([\d.]+)%", out.stdout)
    assert [e for e, _ in per_epoch] == ["1", "2", "3"]
    assert best.group(1) == max((a for _, a in per_epoch), key=float)
    assert re.search(r"evaluated: test accuracy ([\d.]+)%", out.stdout).group(1) == best.group(1)
