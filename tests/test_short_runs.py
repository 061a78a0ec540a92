"""Short runs are not silent (issue 31): one epoch of the digits (23 steps) tests well above chance, because BN's
running statistics are the cumulative average of the first epoch's batches; and a run whose output layer never
fires on the test set says so."""

import json

import torch
from torch import nn

from conftest import run_snnexp
from snnexp.nn.norms import BatchNormOverTime
from snnexp.train.epoch import cumulative_bn_statistics


def test_one_epoch_of_the_digits_tests_well_above_chance(tmp_path):
    run_snnexp("train", "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=run", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_acc"] > 0.3  # chance: 0.1


def test_a_run_whose_output_never_fires_says_so(tmp_path):
    out = run_snnexp("train", "trainer.epochs=1", "trainer.progress=false", "neuron.v_threshold=50",
                     "hydra.run.dir=run", cwd=tmp_path)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "never fired" in line]
    assert len(lines) == 1 and "10_PLIF" in lines[0] and "neuron.v_threshold" in lines[0]


def test_the_first_epoch_averages_bn_statistics_and_later_epochs_use_the_momentum():
    """In the first epoch the running mean is the plain mean of the batch means (the cumulative average), not the
    exponential average from 0; afterwards the configured momentum is back."""
    torch.manual_seed(0)
    bn, plain = BatchNormOverTime(3), nn.Identity()
    batches = [torch.randn(2, 4, 3) * 2 + k for k in range(5)]
    with cumulative_bn_statistics(nn.Sequential(bn, plain), on=True):
        assert bn.momentum is None
        for x in batches:
            bn(x)
    expected = torch.stack([x.flatten(0, 1).mean(0) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)
    assert bn.momentum == 0.1
    with cumulative_bn_statistics(nn.Sequential(bn), on=False):
        assert bn.momentum == 0.1
