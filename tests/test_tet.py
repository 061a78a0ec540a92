"""TET (Deng et al., ICLR 2022; issue 33): the loss of every time step's scores, checked against SpikingJelly's
implementation of its cross-entropy part and against the paper's formula, on every readout."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import run_snnexp
from snnexp.errors import ConfigError
from snnexp.nn.losses import TET, CERate
from snnexp.nn.readouts import MembraneReadout, RateReadout, VotingReadout

sj_loss = pytest.importorskip("spikingjelly.activation_based.functional.loss")


def scores(T=6, B=5, K=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, K, generator=g, dtype=dtype, requires_grad=True), torch.randint(0, K, (B,), generator=g)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_without_the_mse_term_it_is_spikingjellys_tet_cross_entropy(dtype, tol):
    ours_x, y = scores(dtype=dtype)
    theirs_x = ours_x.detach().clone().requires_grad_(True)
    ours, theirs = TET(lam=0.0)(ours_x, y), sj_loss.temporal_efficient_training_cross_entropy(theirs_x, y)
    ours.backward()
    theirs.backward()
    assert abs(ours.item() - theirs.item()) <= tol
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=0, atol=tol)


def test_with_the_mse_term_it_is_the_papers_formula():
    """L = (1 - lam) 1/T sum_t CE(O[t], y) + lam 1/T sum_t MSE(O[t], phi), written here step by step."""
    x, y = scores()
    lam, phi = 0.3, 1.5
    T = x.shape[0]
    ce = sum(F.cross_entropy(x[t], y) for t in range(T)) / T
    mse = sum(((x[t] - phi) ** 2).mean() for t in range(T)) / T
    expected = (1 - lam) * ce + lam * mse
    assert TET(lam=lam, phi=phi)(x, y).item() == pytest.approx(expected.item(), abs=1e-12)


def smoothed_cross_entropy(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing by its definition: (1 - eps) CE(x, y) + eps * the mean over the K classes of -log p_k,
    averaged over the rows of x [B, K]."""
    log_p = torch.log_softmax(x, dim=-1)
    ce = -log_p.gather(1, y[:, None]).squeeze(1)
    return ((1 - eps) * ce + eps * -log_p.mean(dim=-1)).mean()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_ce_rate_label_smoothing_is_its_definition(eps):
    x, y = scores(T=1, B=7, K=10)
    ours = CERate(label_smoothing=eps)(x[0], y)
    expected = smoothed_cross_entropy(x[0], y, eps)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-12)
    if eps:
        assert ours.item() != pytest.approx(F.cross_entropy(x[0], y).item(), abs=1e-6)


@pytest.mark.parametrize("K", [4, 20])  # both layouts of mean_step_cross_entropy (under 16 classes and more)
def test_tet_label_smoothing_smooths_every_steps_cross_entropy(K):
    x, y = scores(T=5, B=6, K=K)
    lam, phi, eps = 0.3, 1.5, 0.1
    T = x.shape[0]
    ce = sum(smoothed_cross_entropy(x[t], y, eps) for t in range(T)) / T
    mse = sum(((x[t] - phi) ** 2).mean() for t in range(T)) / T
    expected = (1 - lam) * ce + lam * mse
    assert TET(lam=lam, phi=phi, label_smoothing=eps)(x, y).item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("loss", [CERate, TET])
@pytest.mark.parametrize("eps", [1.0, -0.1])
def test_label_smoothing_out_of_range_is_refused(loss, eps):
    with pytest.raises(ConfigError, match=rf"loss.label_smoothing={eps} is out of range: must be in \[0, 1\)"):
        loss(label_smoothing=eps)


@pytest.mark.parametrize("readout", [RateReadout(), VotingReadout(population=3), MembraneReadout("mean"),
                                     MembraneReadout("max"), MembraneReadout("last")])
def test_every_readout_gives_the_steps_its_scores_reduce(readout):
    out = torch.rand(5, 2, 12)
    steps = readout.per_step(out)
    assert steps.shape == (5, 2, 12 // readout.population)
    reduce = {"max": steps.amax(0), "last": steps[-1]}.get(getattr(readout, "reduce", "mean"), steps.mean(0))
    torch.testing.assert_close(readout(out), reduce)


def test_lam_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"loss.lam=2.0 is out of range: must be in \[0, 1\]"):
        TET(lam=2.0)


@pytest.mark.parametrize("readout", ["rate", "membrane_mean"])
def test_it_trains_through_the_cli(tmp_path, readout):
    model = ["model=mlp"] if readout != "rate" else []  # a membrane readout replaces the last spiking layer
    run_snnexp("train", "loss=tet", f"readout={readout}", *model, "trainer.epochs=1", "trainer.max_steps=3",
               "trainer.progress=false", "hydra.run.dir=r", cwd=tmp_path)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["test_loss"] > 0


def test_the_methods_compose_in_one_sweep(tmp_path):
    """snnexp train -m neuron=plif,psn loss=mse_rate,tet: four runs, each trained, the sweep's table beside them."""
    out = run_snnexp("train", "-m", "neuron=plif,psn", "loss=mse_rate,tet", "trainer.epochs=1", "trainer.max_steps=1",
                     "model=mlp", "trainer.batch_size=256", "trainer.progress=false", "hydra.sweep.dir=sweep",
                     cwd=tmp_path)
    runs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4 and all(("neuron=psn" in r) + ("neuron=plif" in r) == 1 for r in runs)
    assert (tmp_path / "sweep" / "compare.csv").is_file() and "loss" in out.stdout and "neuron" in out.stdout
