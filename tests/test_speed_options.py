"""The speed switches (trainer.channels_last, trainer.join_layers, trainer.amp, trainer.compile, neuron.backend)
compute the same network and train: the first batch gives the default run's loss from the same weights, and a few
epochs on the built-in digits reach far above chance."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from snnexp.cli import conf_dir
from snnexp.train.build import build_run, seed_everything
from snnexp.train.epoch import forward
from snnexp.train.loop import fit

COMMON = ["trainer.progress=false", "trainer.batch_size=64"]


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[*COMMON, *overrides])


def first_batch_loss(*overrides):
    cfg = compose_train(*overrides)
    seed_everything(cfg.trainer.seed)
    run = build_run(cfg, torch.device("cpu"))
    x, y = next(iter(torch.utils.data.DataLoader(run.splits.train, batch_size=64)))
    run.model.train()
    loss = run.loss_fn(forward(run, x), y)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in run.model.parameters() if p.grad is not None])
    return loss.detach(), grad


@pytest.mark.parametrize("switch,tol", [
    ("trainer.channels_last=false", 1e-5),
    ("trainer.join_layers=false", 1e-5),
    ("neuron.backend=reference", 1e-5),
    ("trainer.compile=true", 1e-5),
    ("trainer.amp=true", 2e-2),  # bfloat16 convolutions on the CPU
])
def test_switch_gives_the_default_loss_and_gradient(switch, tol):
    loss, grad = first_batch_loss()
    loss_s, grad_s = first_batch_loss(switch)
    torch.testing.assert_close(loss_s, loss, rtol=tol, atol=tol)
    assert torch.nn.functional.cosine_similarity(grad_s, grad, dim=0) > (0.999999 if tol < 1e-3 else 0.99)


@pytest.mark.slow  # about 50 s for the three; the first-batch test above runs each switch's forward and backward
@pytest.mark.parametrize("switch", ["trainer.channels_last=false", "trainer.amp=true", "trainer.compile=true"])
def test_switch_trains(tmp_path, switch):
    cfg = compose_train(switch, "trainer.epochs=2")
    metrics = fit(cfg, tmp_path, hparams={})
    assert metrics["test_acc"] > 0.5  # 10 classes: chance is 0.1; the default run reaches about 0.78 here
    assert metrics["train_samples_per_s"] > 0
