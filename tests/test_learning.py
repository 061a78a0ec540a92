"""Learning rules (snnexp.train.learning: learning=sltt, ottt) and scaled weight standardisation (norm=sws): the
gradients against SpikingJelly's SLTTLIFNode and against the papers' formulas, the standardised weight against
SpikingJelly's WSConv2d / WSLinear and the formula, the refusals, and short runs of the CLI."""

import functools
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from conftest import run_snnexp
from snnexp.cli import conf_dir
from snnexp.config import range_problem
from snnexp.errors import ModelError
from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import LIF
from snnexp.nn.norms import NoNorm
from snnexp.nn.surrogate import ATan
from snnexp.nn.weight_standardization import ScaledWeightStandardization, StandardisedWeight
from snnexp.train.build import part_problems
from snnexp.train.learning import BPTT, OTTT, SLTT

sj = pytest.importorskip("spikingjelly.activation_based", reason="SpikingJelly (the bench extra) is not installed")
from spikingjelly.activation_based import functional as sj_functional  # noqa: E402
from spikingjelly.activation_based import layer as sj_layer  # noqa: E402
from spikingjelly.activation_based import surrogate as sj_surrogate  # noqa: E402
from spikingjelly.activation_based.neuron import SLTTLIFNode  # noqa: E402


def sltt_lif(**kwargs) -> LIF:
    neuron = LIF(surrogate=ATan(2.0), **kwargs)
    SLTT().prepare(neuron)
    return neuron


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_sltt_lif_equals_spikingjelly_sltt_node(v_reset, decay_input, detach_reset):
    torch.manual_seed(0)
    settings = dict(tau=2.0, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset)
    x = (torch.randn(6, 3, 5, dtype=torch.float64) * 1.5).requires_grad_()
    probe = torch.randn(6, 3, 5, dtype=torch.float64)
    ours = sltt_lif(**settings)(x)
    (gx,) = torch.autograd.grad((ours * probe).sum(), x)
    node = SLTTLIFNode(surrogate_function=sj_surrogate.ATan(alpha=2.0), step_mode="s", **settings).train()
    x2 = x.detach().clone().requires_grad_()
    theirs = torch.stack([node(xt) for xt in x2])
    sj_functional.reset_net(node)
    (gx2,) = torch.autograd.grad((theirs * probe).sum(), x2)
    assert ours.sum() > 0 and torch.equal(ours, theirs)
    torch.testing.assert_close(gx, gx2, rtol=0, atol=1e-12)


def test_sltt_gradient_is_the_spatial_formula_on_a_two_layer_network():
    """dL/dX[t] = W1^T (sg'(H1[t] - V_th) / tau * W2^T (dL/dS2[t] sg'(H2[t] - V_th) / tau)): step t only."""
    torch.manual_seed(1)
    tau, T = 2.0, 5
    w1, w2 = torch.randn(7, 4, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    x = (torch.randn(T, 2, 4, dtype=torch.float64) * 2).requires_grad_()
    probe = torch.randn(T, 2, 3, dtype=torch.float64)

    def network(learning):
        n1, n2 = LIF(tau=tau, surrogate=ATan(2.0)), LIF(tau=tau, surrogate=ATan(2.0))
        learning.prepare(nn.ModuleList([n1, n2]))
        return n2(n1(x @ w1.T) @ w2.T)

    out = network(SLTT())
    (grad,) = torch.autograd.grad((out * probe).sum(), x)
    assert torch.equal(out, _lif_potentials(_lif_potentials(x.detach() @ w1.T, tau)[1] @ w2.T, tau)[1])
    expected = torch.stack([_spatial_grad(x.detach(), w1, w2, probe, tau, t) for t in range(T)])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    (full,) = torch.autograd.grad((network(BPTT()) * probe).sum(), x)
    assert not torch.allclose(full, grad)  # the temporal term is there in BPTT, absent in SLTT


def _atan_derivative(u, alpha=2.0):
    """ATan's surrogate gradient: alpha / 2 / (1 + (pi / 2 alpha u)^2)."""
    return alpha / 2 / (1 + (torch.pi / 2 * alpha * u) ** 2)


def _lif_potentials(y, tau):
    """H[t] and S[t] of a LIF (decay_input, hard reset to 0) over y [T, ...]."""
    v, hs, ss = torch.zeros_like(y[0]), [], []
    for yt in y:
        h = v + (yt - v) / tau
        s = (h >= 1.0).to(y.dtype)
        v = h * (1 - s)
        hs.append(h)
        ss.append(s)
    return torch.stack(hs), torch.stack(ss)


def _spatial_grad(x, w1, w2, probe, tau, t):
    h1, s1 = _lif_potentials(x @ w1.T, tau)
    h2, _ = _lif_potentials(s1 @ w2.T, tau)
    d2 = probe[t] * _atan_derivative(h2[t] - 1.0) / tau
    d1 = (d2 @ w2) * _atan_derivative(h1[t] - 1.0) / tau
    return d1 @ w1


def test_sltt_k_takes_the_gradient_of_k_steps_only():
    neuron = LIF(surrogate=ATan(2.0))
    rule = SLTT(k=2)
    rule.prepare(neuron)
    rule.before_batch(neuron, seed=0, step=3, T=6)
    x = (torch.randn(6, 4, 5, dtype=torch.float64) * 2).requires_grad_()
    neuron(x).sum().backward()
    with_grad = [t for t in range(6) if x.grad[t].abs().sum() > 0]
    assert with_grad == [t for t, keep in enumerate(neuron.gradient_steps) if keep] and len(with_grad) == 2
    rule.before_batch(neuron, seed=0, step=3, T=6)
    assert neuron.gradient_steps == tuple(t in with_grad for t in range(6))  # drawn from (seed, step): the same


def fc_network(w1, w2, tau=2.0):
    """FC-SN-FC-SN with the given weights, float64."""
    net = SpecNet(f"FC{w1.shape[0]}-SN-FC{w2.shape[0]}-SN", [w1.shape[1]], w2.shape[0],
                  lambda: LIF(tau=tau, surrogate=ATan(2.0)), NoNorm).double()
    with torch.no_grad():
        net[0].module.weight.copy_(w1)
        net[2].module.weight.copy_(w2)
    return net


def ottt_batch(net, x, probe, backward=torch.Tensor.backward):
    rule = OTTT()
    rule.prepare(net)
    probes = iter(probe)
    return rule.backward_batch(net, x, lambda out: (out[0] * next(probes)).sum(), backward)


def test_ottt_gradient_is_the_papers_on_a_two_layer_network():
    """Per step t, loss L[t] / T backpropagated at once: dW2 = sum_t delta2[t]^T a1[t], with the trace
    a1[t] = (1 - 1/tau) a1[t-1] + S1[t] in place of S1[t], and dW1 = sum_t delta1[t]^T X[t] (the input is no spike
    train: no trace), delta1[t] = (delta2[t] W2) sg'(H1[t] - V_th) / tau: the spatial path only."""
    torch.manual_seed(3)
    tau, T = 2.0, 6
    w1, w2 = torch.randn(7, 4, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64) * 3
    x = torch.randn(T, 2, 4, dtype=torch.float64) * 2
    probe = torch.randn(T, 2, 3, dtype=torch.float64)
    net = fc_network(w1, w2, tau)
    outs, total, bad = ottt_batch(net, x, probe)
    h1, s1 = _lif_potentials(x @ w1.T, tau)
    h2, s2 = _lif_potentials(s1 @ w2.T, tau)
    assert bad is None and torch.equal(outs, s2) and s1.sum() > 0 and s2.sum() > 0
    assert total == pytest.approx(float((s2 * probe).sum() / T), rel=1e-12)
    a1, g1, g2 = torch.zeros_like(s1[0]), torch.zeros_like(w1), torch.zeros_like(w2)
    for t in range(T):
        a1 = (1 - 1 / tau) * a1 + s1[t]
        delta2 = probe[t] * _atan_derivative(h2[t] - 1.0) / tau / T
        delta1 = (delta2 @ w2) * _atan_derivative(h1[t] - 1.0) / tau
        g2 += delta2.T @ a1
        g1 += delta1.T @ x[t]
    torch.testing.assert_close(net[2].module.weight.grad, g2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net[0].module.weight.grad, g1, rtol=1e-12, atol=1e-12)
    assert not net[1].carry_membrane and net[1].carried_v is None  # a test pass runs the whole sequence again


def test_ottt_memory_does_not_grow_with_time_steps():
    """The numbers autograd keeps for one backward: those of one step under OTTT, whatever T; all steps' in BPTT."""

    def kept(T, online):
        torch.manual_seed(4)
        w1, w2 = torch.randn(16, 8, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
        x, probe = torch.randn(T, 4, 8, dtype=torch.float64) * 2, torch.randn(T, 4, 5, dtype=torch.float64)
        counts, peak = [0], [0]

        def pack(t):
            counts[0] += t.numel()
            peak[0] = max(peak[0], counts[0])
            return t

        def backward(loss):
            loss.backward()
            counts[0] = 0

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if online:
                ottt_batch(fc_network(w1, w2), x, probe, backward)
            else:
                backward((fc_network(w1, w2)(x) * probe).sum())
        return peak[0]

    assert kept(4, True) == kept(16, True) > 0
    assert kept(16, False) > 2 * kept(4, False) > 2 * kept(4, True)


def _standardised(w, gain, eps=1e-4):
    flat = w.flatten(1)
    std = (flat.var(1, keepdim=True) * flat.shape[1] + eps).sqrt()
    return (gain.view(-1, 1) * (flat - flat.mean(1, keepdim=True)) / std).view_as(w)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_sws_equals_spikingjelly_ws_layers_and_the_formula(dtype, tol):
    torch.manual_seed(2)
    norm = functools.partial(ScaledWeightStandardization, eps=1e-4)
    net = SpecNet("c6k3s1-BN-SN-FC10-BN-SN", [2, 5, 5], 10, lambda: LIF(), norm).to(dtype)
    conv, fc = net[0].module, net[4].module
    with torch.no_grad():
        for layer in (conv, fc):
            layer.parametrizations.weight[0].gain.uniform_(0.5, 2.0)
    ws_conv = sj_layer.WSConv2d(2, 6, 3, 1, 1, bias=False).to(dtype)
    ws_fc = sj_layer.WSLinear(150, 10, bias=False).to(dtype)
    with torch.no_grad():
        for ws, layer in ((ws_conv, conv), (ws_fc, fc)):
            ws.weight.copy_(layer.parametrizations.weight.original)
            ws.gain.copy_(layer.parametrizations.weight[0].gain.view_as(ws.gain))
    x = torch.randn(3, 2, 5, 5, dtype=dtype)
    torch.testing.assert_close(conv(x), ws_conv(x), rtol=tol, atol=tol)
    z = torch.randn(3, 150, dtype=dtype)
    torch.testing.assert_close(fc(z), ws_fc(z), rtol=tol, atol=tol)
    w = conv.parametrizations.weight
    torch.testing.assert_close(conv.weight, _standardised(w.original, w[0].gain), rtol=tol, atol=tol)
    assert torch.equal(net[1](x), x)  # the BN token itself: the identity


def test_sws_needs_a_conv_or_fc_before_it():
    with pytest.raises(ModelError, match="norm=sws"):
        SpecNet("c6k3s1-MPk2s2-BN-SN-FC10-SN", [2, 6, 6], 10, lambda: LIF(), ScaledWeightStandardization)
    with pytest.raises(ModelError, match="norm=sws"):
        ScaledWeightStandardization(4)(torch.zeros(1, 4))  # built outside a spec network: not attached
    assert isinstance(StandardisedWeight(3).gain, nn.Parameter)


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["trainer.progress=false", *overrides])


@pytest.mark.parametrize("overrides,words", [
    (["neuron=alif"], "LIF-family"),
    (["neuron=psn"], "LIF-family"),
    (["model=rsnn"], "recurrent"),
    (["trainer.compile=true"], "trainer.compile=false"),
    (["learning.k=5"], "learning.k=5 is more than trainer.T=4"),
])
def test_sltt_refuses_what_it_does_not_define(overrides, words):
    problems = part_problems(compose_train("learning=sltt", *overrides))
    assert len(problems) == 1 and words in problems[0]
    if not overrides[0].startswith("learning."):
        assert part_problems(compose_train(*overrides)) == []  # under learning=bptt: fine


@pytest.mark.parametrize("overrides,words", [
    (["norm=bn"], "norm=sws"),
    (["norm=tebn"], "norm=sws"),
    (["norm=sws", "neuron=alif"], "LIF-family"),
    (["norm=sws", "model=resnet18"], "not ResNets"),
    (["norm=sws", "readout=membrane_max", "loss=ce_rate"], "readout=rate"),
    (["norm=sws", "trainer.micro_batch=8"], "trainer.micro_batch=null"),
])
def test_ottt_refuses_what_it_does_not_define(overrides, words):
    problems = part_problems(compose_train("learning=ottt", *overrides))
    assert len(problems) == 1 and words in problems[0], problems
    assert part_problems(compose_train("learning=ottt", "norm=sws")) == []
    # the output layer's currents read at every step as they are (tau 1: no state from step to step), as OTTT reads out
    assert part_problems(compose_train("learning=ottt", "norm=sws", "readout=membrane_mean", "readout.tau=1",
                                       "loss=ce_rate")) == []


def test_learning_k_range_and_the_cli_refusal(tmp_path):
    assert range_problem("learning.k", 0) and range_problem("learning.k", None) is None
    proc = run_snnexp("train", "learning=sltt", "neuron=alif", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "LIF-family" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("learning", ["sltt", "ottt"])
def test_cli_trains_with_sws(tmp_path, learning):
    run_snnexp("train", f"learning={learning}", "norm=sws", "trainer.epochs=1", "trainer.max_steps=2",
               "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 2


@pytest.mark.parametrize("learning", [["learning=sltt", "learning.k=2"], ["learning=ottt"]])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, learning):
    from test_resume import same_results

    args = [*learning, "norm=sws", "neuron=lif", "trainer.epochs=1", "trainer.progress=false", "model=mlp",
            "trainer.batch_size=256"]  # 6 steps: stopped after 3, resumed
    run_snnexp("train", *args, "hydra.run.dir=whole", cwd=tmp_path)
    run_snnexp("train", *args, "trainer.max_steps=3", "hydra.run.dir=cut", cwd=tmp_path)
    run_snnexp("train", "resume=cut", "trainer.max_steps=null", cwd=tmp_path)
    same_results(tmp_path / "whole", tmp_path / "cut")


def test_the_learning_rules_compare_in_one_sweep(tmp_path):
    """snnexp train -m learning=bptt,ottt norm=sws: both runs trained, the sweep's table lists them by rule."""
    out = run_snnexp("train", "-m", "learning=bptt,ottt", "norm=sws", "trainer.epochs=1", "trainer.max_steps=1",
                     "model=mlp", "trainer.batch_size=256", "trainer.progress=false", "hydra.sweep.dir=sweep",
                     cwd=tmp_path)
    runs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2 and "learning=bptt" in runs[0] and "learning=ottt" in runs[1]
    assert "learning" in out.stdout and (tmp_path / "sweep" / "compare.md").is_file()


def test_ottt_matches_spikingjelly_ottt_on_a_two_layer_network():
    """learning=ottt against SpikingJelly's OTTT (OTTTSequential of Linear and OTTTLIFNode, run one step at a time
    in training mode, as in its spiking_vggws_ottt) on FC-SN-FC-SN with no pooling, where both apply the trace of the
    layer's input spikes, float64. Matched conventions: our LIF takes OTTTLIFNode's defaults (decay_input=False,
    soft reset v_reset=None, detach_reset=True), tau 2, v_threshold 1, sigmoid surrogate alpha 4 in both; the first
    FC layer takes no trace in either (its input is not a spike train: OTTTSequential passes a plain tensor through
    it); no bias in either (ours is built with none). Each step's loss, cross-entropy of that step's output / T, is
    backpropagated at once and the gradients add up over T: the same spikes at every step, the same gradients."""
    from spikingjelly.activation_based.layer import OTTTSequential
    from spikingjelly.activation_based.neuron import OTTTLIFNode

    from snnexp.nn.surrogate import Sigmoid

    torch.manual_seed(5)
    T, B, F, H, C = 4, 3, 5, 6, 2
    settings = dict(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=None, detach_reset=True)
    w1, w2 = torch.randn(H, F, dtype=torch.float64) * 1.5, torch.randn(C, H, dtype=torch.float64) * 2
    x = torch.randn(T, B, F, dtype=torch.float64) * 2
    labels = torch.randint(0, C, (T, B))

    ours = SpecNet(f"FC{H}-SN-FC{C}-SN", [F], C, lambda: LIF(surrogate=Sigmoid(4.0), **settings), NoNorm).double()
    with torch.no_grad():
        ours[0].module.weight.copy_(w1)
        ours[2].module.weight.copy_(w2)
    assert ours[0].module.bias is None and ours[2].module.bias is None
    rule = OTTT()
    rule.prepare(ours)
    steps = iter(labels)
    outs, _, bad = rule.backward_batch(ours, x, lambda out: nn.functional.cross_entropy(out[0], next(steps)),
                                       torch.Tensor.backward)
    assert bad is None

    theirs = OTTTSequential(
        nn.Linear(F, H, bias=False), OTTTLIFNode(surrogate_function=sj_surrogate.Sigmoid(alpha=4.0), **settings),
        nn.Linear(H, C, bias=False), OTTTLIFNode(surrogate_function=sj_surrogate.Sigmoid(alpha=4.0), **settings),
    ).double().train()
    with torch.no_grad():
        theirs[0].weight.copy_(w1)
        theirs[2].weight.copy_(w2)
    spikes = []
    for t in range(T):
        spike, _ = theirs(x[t])
        (nn.functional.cross_entropy(spike, labels[t]) / T).backward()
        spikes.append(spike.detach())
    sj_functional.reset_net(theirs)

    assert torch.equal(outs, torch.stack(spikes)) and outs.sum() > 0 and (outs == 0).any()
    for i in (0, 2):
        assert theirs[i].weight.grad.abs().sum() > 0
        torch.testing.assert_close(ours[i].module.weight.grad, theirs[i].weight.grad, rtol=0, atol=1e-10)
