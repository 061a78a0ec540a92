"""Membrane readouts (docs/science.md, section 4): non-spiking output neurons against their equation and against
SpikingJelly's NonSpikingLIFNode, the swap of the network's last spiking layer, the config rules, the CLI and
the NIR export."""

import json

import nir
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_snnexp
from snnexp.errors import ModelError
from snnexp.export import to_nir
from snnexp.nn.readouts import LeakyIntegrator, MembraneReadout
from snnexp.train.build import build_model


def _explicit(x_seq, tau):
    """V[t] = sum_k (1/tau) (1 - 1/tau)^(t-k) X[k]: the leaky integrator from rest, unrolled."""
    T = x_seq.shape[0]
    return torch.stack([sum((1 / tau) * (1 - 1 / tau) ** (t - k) * x_seq[k] for k in range(t + 1)) for t in range(T)])


@pytest.mark.parametrize("tau", [1.0, 2.0, 7.5])
def test_leaky_integrator_is_the_unrolled_equation(tau):
    x = torch.randn(9, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(LeakyIntegrator(tau)(x), _explicit(x, tau))


@pytest.mark.parametrize("reduce, decode", [("max", "max-mem"), ("mean", "mean-mem"), ("last", "last_mem")])
def test_readout_equals_spikingjelly_non_spiking_lif(reduce, decode):
    lif = pytest.importorskip("spikingjelly.activation_based.neuron.lif")
    x = torch.randn(12, 4, 6, dtype=torch.float64, requires_grad=True)
    readout = MembraneReadout(reduce, tau=3.0)
    ours = readout(readout.output_layer()(x))
    theirs = lif.NonSpikingLIFNode(tau=3.0, decode=decode)(x)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    (d_ours,) = torch.autograd.grad(ours, x, g)
    (d_theirs,) = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(d_ours, d_theirs)


def test_max_reads_the_largest_potential_over_time():
    v = torch.tensor([[[0.25, 2.0]], [[0.5, -1.0]], [[0.75, 0.0]]])  # [T=3, B=1, K=2]
    assert MembraneReadout("max")(v).tolist() == [[0.75, 2.0]]
    assert MembraneReadout("last")(v).tolist() == [[0.75, 0.0]]
    torch.testing.assert_close(MembraneReadout("mean")(v), torch.tensor([[0.5, 1 / 3]]))


def _cfg(readout, spec="FC16-BN-SN-FC10-SN"):
    return OmegaConf.create({
        "model": {"_target_": "snnexp.nn.models.SpecNet", "spec": spec},
        "readout": readout,
        "neuron": {"_target_": "snnexp.nn.neurons.LIF", "_partial_": True},
        "surrogate": {"_target_": "snnexp.nn.surrogate.ATan"},
        "norm": {"_target_": "snnexp.nn.norms.BatchNormOverTime", "_partial_": True},
    })


def test_build_model_puts_the_integrator_in_place_of_the_last_spiking_layer():
    readout = {"_target_": "snnexp.nn.readouts.MembraneReadout", "reduce": "max", "tau": 4.0}
    model = build_model(_cfg(readout), [64], 10)
    assert isinstance(model[-1], LeakyIntegrator) and model[-1].tau == 4.0
    rate_model = build_model(_cfg({"_target_": "snnexp.nn.readouts.RateReadout"}), [64], 10)
    assert type(rate_model[-1]).__name__ == "LIF"  # the rate readout keeps the spiking output
    out = model(torch.rand(5, 2, 64))
    assert out.shape == (5, 2, 10) and not set(out.unique().tolist()) <= {0.0, 1.0}  # potentials, not spikes


def test_a_network_that_does_not_end_with_a_spiking_layer_is_refused():
    readout = {"_target_": "snnexp.nn.readouts.MembraneReadout", "reduce": "max"}
    with pytest.raises(ModelError, match=r"ends with SeqToANN: end the network with FC<classes>-SN"):
        build_model(_cfg(readout, "FC16-BN-SN-FC100-SN-APk10s10"), [64], 10)


def test_export_writes_the_output_neurons_as_nir_leaky_integrators():
    readout = {"_target_": "snnexp.nn.readouts.MembraneReadout", "reduce": "last", "tau": 5.0}
    graph = to_nir(build_model(_cfg(readout), [64], 10), [64], dt=1e-3)
    li = [node for node in graph.nodes.values() if isinstance(node, nir.LI)]
    assert len(li) == 1
    np.testing.assert_allclose(li[0].tau, np.full(10, 5e-3, np.float32))
    np.testing.assert_allclose(li[0].r, 1.0)
    np.testing.assert_allclose(li[0].v_leak, 0.0)


@pytest.mark.parametrize("readout", ["membrane_max", "membrane_mean", "membrane_last"])
def test_cli_trains_with_a_membrane_readout(tmp_path, readout):
    run_snnexp("train", f"readout={readout}", "loss=ce_rate", "model=mlp", "model.hidden=[16]", "trainer.epochs=1",
               "trainer.max_steps=3", "trainer.progress=false", "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and np.isfinite(metrics["test_loss"])
    proc = run_snnexp("eval", "checkpoint=run/checkpoints/best.pt", "hydra.run.dir=ev", cwd=tmp_path)
    assert "test_acc" in proc.stdout or "accuracy" in proc.stdout.lower()


@pytest.mark.parametrize("args, message", [
    (["readout=membrane_max"], "a membrane readout gives membrane potentials, not firing rates, and loss=mse_rate "
                               "compares rates with one-hot labels: use loss=ce_rate (cross-entropy), or readout=rate"),
    (["readout=membrane_max", "loss=ce_rate", "readout.tau=0.5"],
     "readout.tau=0.5 is out of range: must be >= 1 (time steps; 1 passes the input through)"),
    (["readout=membrane_max", "loss=ce_rate", "readout.reduce=median"],
     "readout.reduce='median' is out of range: must be max, mean or last"),
    (["readout=membrane_max", "loss=ce_rate", "model=plif_mnist"], "end the network with FC<classes>-SN"),
])
def test_bad_membrane_readout_settings_are_one_clear_message(tmp_path, args, message):
    proc = run_snnexp("train", *args, "trainer.max_steps=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
