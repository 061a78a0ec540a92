"""Every option of every config group composes, validates, builds and trains (in-process, a few steps)."""

import json

import pytest
from hydra import compose, initialize_config_dir

from snnexp.cli import conf_dir
from snnexp.config import validate
from snnexp.train.loop import fit

OPTIONS = [
    "model=mlp", "model=fc", "neuron=if", "neuron=lif", "neuron=stbp", "norm=tdbn", "norm=none", "norm=neunorm",
    "encoder=latency", "neuron=alif",
    "encoder=poisson", "surrogate=rect", "surrogate=sigmoid", "surrogate=fast_sigmoid", "surrogate=triangle",
    "loss=ce_rate", "optim=sgd", "sched=step", "sched=none", "neuron.v_reset=null", "neuron.decay_input=false",
    "trainer.amp=true",
    # the methods of 2022-2023 (issue 33): the loss of every step, norms with per-step parts, parallel neurons
    "loss=tet", "norm=tebn", "norm=bntt", "neuron=psn", "neuron=masked_psn", "neuron=sliding_psn",
    "neuron=psn norm=neunorm",
]


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("override", OPTIONS)
def test_every_option_trains(tmp_path, override):
    cfg = compose_train(*override.split(), "trainer.epochs=1", "trainer.max_steps=2", "trainer.progress=false")
    validate(cfg)
    metrics = fit(cfg, tmp_path, hparams={"override": override})
    assert metrics["step"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 2
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
