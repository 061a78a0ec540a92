"""sched=warmup_cosine (snnexp.train.schedules): linear warmup then cosine annealing, against its formula; its state
goes through a checkpoint; the config composes and trains."""

import math

import pytest
import torch

from snnexp.errors import ConfigError
from snnexp.train.schedules import warmup_cosine


def formula(e, lr, warmup, warmup_lr, epochs, eta_min):
    if e < warmup:
        return warmup_lr + (lr - warmup_lr) * e / warmup
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))) / 2


def optimizer(lr=5e-4):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def run(opt, sched, epochs):
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_warmup_cosine_is_its_formula(warmup):
    opt = optimizer()
    lrs = run(opt, warmup_cosine(opt, epochs=40, warmup_epochs=warmup, warmup_lr=1e-5, eta_min=1e-5), 40)
    assert lrs == pytest.approx([formula(e, 5e-4, warmup, 1e-5, 40, 1e-5) for e in range(40)], rel=1e-9, abs=1e-15)


def test_its_state_resumes_where_it_stopped():
    opt = optimizer()
    sched = warmup_cosine(opt, epochs=30, warmup_epochs=5, warmup_lr=1e-6)
    run(opt, sched, 7)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    rest = run(opt, sched, 10)
    opt2 = optimizer()
    sched2 = warmup_cosine(opt2, epochs=30, warmup_epochs=5, warmup_lr=1e-6)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert run(opt2, sched2, 10) == pytest.approx(rest, rel=1e-12)


def test_a_run_shorter_than_its_warmup_ends_with_one_epoch_of_cosine():
    opt = optimizer()
    lrs = run(opt, warmup_cosine(opt, epochs=3, warmup_epochs=10, warmup_lr=1e-5, eta_min=0.0), 3)
    assert lrs == pytest.approx([formula(e, 5e-4, 2, 1e-5, 3, 0.0) for e in range(3)], rel=1e-9)
    assert lrs[-1] == pytest.approx(5e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 10, "warmup_epochs": -1}, r"sched.warmup_epochs=-1 is out of range: must be an integer >= 0"),
    ({"epochs": 10, "warmup_epochs": 2, "warmup_lr": 1.0}, r"sched.warmup_lr=1.0 is out of range"),
    ({"epochs": 0}, r"sched.epochs=0 is out of range"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        warmup_cosine(optimizer(), **kwargs)


def test_it_composes_and_trains(tmp_path):
    from hydra import compose, initialize_config_dir

    from snnexp.cli import conf_dir
    from snnexp.config import validate
    from snnexp.train.loop import fit

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sched=warmup_cosine", "optim=adamw", "model=mlp",
                                                      "trainer.epochs=2", "sched.warmup_epochs=1",
                                                      "trainer.progress=false"])
    validate(cfg)
    assert cfg.sched.epochs == 2
    metrics = fit(cfg, tmp_path, hparams={})
    assert metrics["epoch"] == 2
